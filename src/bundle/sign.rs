//! Signed bundles: an Ed25519 signature, in minisign's format, over a closed bundle's
//! `MANIFEST.sha256`. The hash list names every file of the bundle with its SHA-256 and
//! `pack::verify_whole` refuses anything unlisted, so a good signature over the list vouches
//! for every byte. The files are plain minisign files: `minisign -Vm MANIFEST.sha256 -p
//! KEY.pub` checks a bundle without glad, and keys made by `minisign -G` work here.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use minisign::{PublicKey, PublicKeyBox, SecretKeyBox, SignatureBox};

use super::pack::{verify_whole, HASH_FILE};

/// The signature file, next to the hash list it signs.
pub const SIG_FILE: &str = "MANIFEST.sha256.minisig";
/// The password of an encrypted secret key is read from this variable (never prompted for:
/// signing runs in build pipelines).
pub const PASSWORD_ENV: &str = "GLAD_SIGN_PASSWORD";

/// Key files are a few lines: anything larger is not one.
const MAX_KEY_FILE: u64 = 4096;

fn read_small(path: &Path, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot read the {what}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_KEY_FILE {
        bail!("{}: not a {what} (expected a minisign file of at most {MAX_KEY_FILE} bytes)", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the {what}", path.display()))
}

/// Reads a minisign public key file (`untrusted comment: …` then the base64 key).
pub fn read_public_key(path: &Path) -> Result<PublicKey> {
    let text = read_small(path, "public key")?;
    PublicKeyBox::from_string(&text)
        .and_then(|b| b.into_public_key())
        .map_err(|e| anyhow::anyhow!("{}: not a minisign public key: {e}", path.display()))
}

/// The key id minisign prints (16 hex digits).
pub fn key_id(pk: &PublicKey) -> String {
    let b = pk.keynum();
    let mut id = [0u8; 8];
    id.copy_from_slice(&b[..8]);
    format!("{:016X}", u64::from_le_bytes(id))
}

/// Writes a new key pair: `out.key` (secret, mode 0600, unencrypted unless `GLAD_SIGN_PASSWORD`
/// is set) and `out.pub`. Refuses to overwrite either. Returns the key id.
pub fn keygen(out: &Path) -> Result<(PathBuf, PathBuf, String)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = out.with_extension("key");
    let public = out.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            bail!("{}: already exists; keygen never overwrites a key", p.display());
        }
    }
    let kp = match std::env::var(PASSWORD_ENV) {
        Ok(pw) if !pw.is_empty() => minisign::KeyPair::generate_encrypted_keypair(Some(pw)),
        _ => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| anyhow::anyhow!("cannot generate a key pair: {e}"))?;
    let id = key_id(&kp.pk);
    let sk_text = kp.sk.to_box(Some("glad-edge bundle signing key")).map_err(|e| anyhow::anyhow!("{e}"))?.into_string();
    let pk_text = kp.pk.to_box().map_err(|e| anyhow::anyhow!("{e}"))?.into_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("{}: cannot create", secret.display()))?;
    f.write_all(sk_text.as_bytes()).and_then(|_| f.sync_all()).with_context(|| format!("{}: cannot write", secret.display()))?;
    crate::files::write_atomic(&public, pk_text.as_bytes())?;
    Ok((secret, public, id))
}

/// Signs the closed bundle in `dir` with the secret key file `key`: the bundle must verify
/// whole first (a signature never vouches for a bundle that does not match its list).
pub fn sign(dir: &Path, key: &Path) -> Result<String> {
    match verify_whole(dir)? {
        None => bail!("{}: no {HASH_FILE}: only a closed bundle can be signed (`glad bundle pack` makes one)", dir.display()),
        Some(v) if !v.problems.is_empty() => {
            bail!("{}: does not match its {HASH_FILE} ({}); re-pack it before signing", dir.display(), v.problems.join("; "))
        }
        Some(_) => {}
    }
    let text = read_small(key, "secret key")?;
    let sk_box = SecretKeyBox::from_string(&text).map_err(|e| anyhow::anyhow!("{}: not a minisign secret key: {e}", key.display()))?;
    let password = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty());
    let sk = match password {
        Some(pw) => sk_box.into_secret_key(Some(pw)),
        None => sk_box.into_unencrypted_secret_key(),
    }
    .map_err(|e| {
        anyhow::anyhow!("{}: cannot use the secret key ({e}); an encrypted key needs its password in {PASSWORD_ENV}", key.display())
    })?;
    let list = dir.join(HASH_FILE);
    let data = std::fs::File::open(&list).with_context(|| format!("{}: cannot open", list.display()))?;
    let name = super::Manifest::read(dir).map(|m| m.name).unwrap_or_default();
    let trusted = format!("glad-edge bundle {name}: {HASH_FILE}");
    let sig = minisign::sign(None, &sk, data, Some(&trusted), Some("glad-edge bundle signature"))
        .map_err(|e| anyhow::anyhow!("{}: cannot sign: {e}", dir.display()))?;
    crate::files::write_atomic(&dir.join(SIG_FILE), sig.into_string().as_bytes())?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&sk.keynum()[..8]);
    Ok(format!("{:016X}", u64::from_le_bytes(id)))
}

/// Checks `dir`'s signature against the public keys in `keys`; returns the path of the key
/// that verified it. The bundle must also verify whole (checked here, so a caller cannot
/// trust a signature over a list that no longer matches the files).
pub fn verify_signature(dir: &Path, keys: &[PathBuf]) -> Result<PathBuf> {
    match verify_whole(dir)? {
        None => bail!("{}: not closed (no {HASH_FILE}), so not signed; only signed bundles are trusted here", dir.display()),
        Some(v) if !v.problems.is_empty() => bail!("{}: does not match its {HASH_FILE}: {}", dir.display(), v.problems.join("; ")),
        Some(_) => {}
    }
    let sig_path = dir.join(SIG_FILE);
    let sig_meta = std::fs::symlink_metadata(&sig_path);
    if !sig_meta.as_ref().is_ok_and(|m| m.file_type().is_file()) {
        bail!("{}: not signed (no {SIG_FILE}); only signed bundles are trusted here (`glad bundle sign`)", dir.display());
    }
    let sig_text = read_small(&sig_path, "signature")?;
    let sig = SignatureBox::from_string(&sig_text).map_err(|e| anyhow::anyhow!("{}: not a minisign signature: {e}", sig_path.display()))?;
    let mut why = Vec::new();
    for k in keys {
        let pk = read_public_key(k)?;
        let data = std::fs::File::open(dir.join(HASH_FILE)).with_context(|| format!("{}: cannot open", dir.join(HASH_FILE).display()))?;
        match minisign::verify(&pk, &sig, data, true, false, false) {
            Ok(()) => return Ok(k.clone()),
            Err(e) => why.push(format!("{} (key {}): {e}", k.display(), key_id(&pk))),
        }
    }
    if keys.is_empty() {
        bail!("{}: no public key to check the signature with", dir.display());
    }
    bail!("{}: the signature verifies with no trusted key: {}", sig_path.display(), why.join("; "))
}

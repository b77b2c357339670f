//! Recipes end to end on the real station, Modbus server and HTTP face: a camera with two
//! recipes (two engines, both loaded at start) switched by the PLC's holding register, by
//! `PUT /api/recipe` and by a config reload; every record names its recipe, and a switch
//! applies from the next frame. A second camera whose settings equal one recipe's shares its
//! engine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod station_http;

use glad_edge::service::http::{HttpConfig, HttpServer};
use glad_edge::sinks::FrameRecord;
use glad_edge::station::{StartOptions, Station, StationConfig};
use station_http::{http, wait_record};

const TOKEN: &str = "recipe-token-0123456789";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One Modbus TCP request (unit 1); the response's PDU (function code first).
fn modbus(port: u16, pdu: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let len = (pdu.len() + 1) as u16;
    let mut req = vec![0, 7, 0, 0];
    req.extend_from_slice(&len.to_be_bytes());
    req.push(1);
    req.extend_from_slice(pdu);
    s.write_all(&req).unwrap();
    let mut head = [0u8; 7];
    s.read_exact(&mut head).unwrap();
    let n = u16::from_be_bytes([head[4], head[5]]) as usize - 1;
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).unwrap();
    body
}

fn read_register(port: u16, addr: u16) -> u16 {
    let [hi, lo] = addr.to_be_bytes();
    let r = modbus(port, &[3, hi, lo, 0, 1]);
    assert_eq!(r[0], 3, "read refused: {r:?}");
    u16::from_be_bytes([r[2], r[3]])
}

/// FC 6; `Ok` or the exception code.
fn write_register(port: u16, addr: u16, value: u16) -> Result<(), u8> {
    let ([hi, lo], [vh, vl]) = (addr.to_be_bytes(), value.to_be_bytes());
    let r = modbus(port, &[6, hi, lo, vh, vl]);
    match r[0] {
        6 => Ok(()),
        0x86 => Err(r[1]),
        f => panic!("unexpected function code {f:#x} in {r:?}"),
    }
}

/// cam0 has recipes `a` (every frame NG) and `b` (another engine: 3 DDIM steps; every frame
/// OK); cam1 has no recipes and `a`'s engine settings.
fn config_text(tmp: &Path, modbus: u16, active: &str) -> String {
    format!(
        "runtime: {{threads: 1}}\nresults: {{dir: {res}, min_free_bytes: 0}}\nfeedback: {{state_dir: {state}}}\n\
         sinks:\n  modbus: {{port: {modbus}}}\n\
         cameras:\n  - name: cam0\n    bundle: {bundle}\n    glad: {{steps: 2, tau: 0}}\n    policy: lossless\n\
         \x20   source: {{replay: {{path: {frames}, fps: 10, loop: true}}}}\n\
         \x20   recipes:\n      - {{name: a, threshold: 0.000001}}\n      - {{name: b, glad: {{steps: 3}}, threshold: 1000000}}\n\
         \x20   active: {active}\n\
         \x20 - name: cam1\n    bundle: {bundle}\n    glad: {{steps: 2, tau: 0}}\n\
         \x20   source: {{replay: {{path: {frames}, fps: 2, loop: true}}}}\n",
        res = tmp.join("results").display(),
        state = tmp.join("state").display(),
        bundle = root().join("onnx/tiny").display(),
        frames = root().join("data/textures/brick/test/good").display(),
    )
}

fn config(text: &str) -> StationConfig {
    StationConfig::from_yaml(Path::new("test.yaml"), text).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

#[test]
fn recipes_switch_by_modbus_register_http_and_reload_and_records_name_them() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t_start = Instant::now();
    let station = Station::start(config(&config_text(tmp.path(), port, "a")), StartOptions::default()).unwrap();
    println!("start with both recipes' engines loaded: {:.2} s", t_start.elapsed().as_secs_f64());
    assert_eq!(station.engines(), 2, "recipe a and cam1 share an engine; recipe b has its own");
    let settings = HttpConfig { bind: "127.0.0.1:0".into(), trigger_token: Some(TOKEN.into()), token_file: None }.resolve().unwrap();
    let server = HttpServer::start(station.state(), settings, Duration::from_secs(30)).unwrap();
    let hport = server.addr().port();
    let state = station.state();

    let r0 = wait_record(&state, "cam0", 0, Duration::from_secs(60), |_| true);
    assert_eq!(r0.recipe.as_deref(), Some("a"), "{r0:?}");
    assert!(r0.is_ng());
    let c1 = wait_record(&state, "cam1", 0, Duration::from_secs(60), |_| true);
    assert_eq!(c1.recipe, None, "a camera without recipes names none");
    assert_eq!(read_register(port, 9), 1, "cam0's recipe register shows recipe 1");
    assert_eq!(read_register(port, 16 + 9), 0, "cam1 has no recipes");

    // The PLC switches to recipe 2: the next frames are inspected under `b`.
    let t_write = Instant::now();
    write_register(port, 9, 2).unwrap();
    let rb = wait_record(&state, "cam0", r0.seq, Duration::from_secs(30), |r| r.recipe.as_deref() == Some("b"));
    println!("modbus write to the first record under the new recipe: {:.0} ms", t_write.elapsed().as_secs_f64() * 1e3);
    assert_eq!(rb.verdict, Some(glad_edge::sinks::Verdict::Normal), "{rb:?}");
    assert_eq!(rb.threshold, Some(1e6));
    assert_eq!(read_register(port, 9), 2);
    let later = wait_record(&state, "cam0", rb.seq, Duration::from_secs(30), |_| true);
    assert_eq!(later.recipe.as_deref(), Some("b"), "the switch holds");
    // Refused writes: a number outside 1..=2, a camera without recipes (0x03), another register (0x02).
    assert_eq!(write_register(port, 9, 3), Err(3));
    assert_eq!(write_register(port, 9, 0), Err(3));
    assert_eq!(write_register(port, 16 + 9, 1), Err(3));
    assert_eq!(write_register(port, 8, 1), Err(2));
    assert_eq!(read_register(port, 9), 2, "a refused write leaves the recipe alone");

    // Over HTTP, with the trigger token.
    let (code, v) = http(hport, "GET", "/api/recipe", None, "");
    assert_eq!(code, 200);
    assert_eq!(v["cameras"]["cam0"]["active"], "b", "{v}");
    assert_eq!(v["cameras"]["cam0"]["recipes"], serde_json::json!(["a", "b"]));
    assert!(v["cameras"].get("cam1").is_none(), "{v}");
    assert_eq!(http(hport, "PUT", "/api/recipe", None, r#"{"camera":"cam0","recipe":"a"}"#).0, 401);
    let (code, v) = http(hport, "PUT", "/api/recipe", Some(TOKEN), r#"{"camera":"cam0","recipe":"c"}"#);
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("no recipe `c` (its recipes: a, b)"), "{v}");
    assert_eq!(http(hport, "PUT", "/api/recipe", Some(TOKEN), r#"{"camera":"cam1","recipe":"a"}"#).0, 409);
    assert_eq!(http(hport, "PUT", "/api/recipe", Some(TOKEN), r#"{"camera":"cam9","recipe":"a"}"#).0, 404);
    let (code, v) = http(hport, "PUT", "/api/recipe", Some(TOKEN), r#"{"camera":"cam0","recipe":"a","number":1}"#);
    assert_eq!(code, 400, "{v}");
    let t_put = Instant::now();
    let (code, v) = http(hport, "PUT", "/api/recipe", Some(TOKEN), r#"{"camera":"cam0","recipe":"a"}"#);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["recipe"]["number"], 1);
    let ra = wait_record(&state, "cam0", later.seq, Duration::from_secs(30), |r| r.recipe.as_deref() == Some("a"));
    println!("PUT /api/recipe to the first record under the new recipe: {:.0} ms", t_put.elapsed().as_secs_f64() * 1e3);
    assert!(ra.is_ng());
    let (_, cams) = http(hport, "GET", "/api/cameras", None, "");
    let cam0 = cams["cameras"].as_array().unwrap().iter().find(|c| c["name"] == "cam0").unwrap().clone();
    assert_eq!(cam0["recipe"]["active"], "a", "{cam0}");

    // Feedback files a frame under its recipe's own folder (each recipe is another part).
    let body = serde_json::json!({ "camera": "cam0", "run_id": ra.run_id, "seq": ra.seq, "feedback": "defect" }).to_string();
    let (code, v) = http(hport, "POST", "/api/feedback", Some(TOKEN), &body);
    assert_eq!(code, 200, "{v}");
    assert!(v["filed"]["input"].as_str().unwrap().contains("/dataset/cam0.a/test/defect/"), "{v}");

    // A reload that changes `active` switches; one that changes a recipe's engine is refused.
    let changes = station.reload(config(&config_text(tmp.path(), port, "b"))).unwrap();
    assert!(changes.contains(&"cameras.cam0.active".to_string()), "{changes:?}");
    let rb2 = wait_record(&state, "cam0", ra.seq, Duration::from_secs(30), |r| r.recipe.as_deref() == Some("b"));
    assert_eq!(rb2.verdict, Some(glad_edge::sinks::Verdict::Normal));
    let text = config_text(tmp.path(), port, "b").replace("glad: {steps: 3}", "glad: {steps: 4}");
    let e = format!("{:#}", station.reload(config(&text)).unwrap_err());
    assert!(e.contains("recipe `b`") && e.contains("`glad` changed"), "{e}");

    server.shutdown(Duration::from_secs(5));
    station.shutdown(Duration::from_secs(10)).unwrap();
    // Every record in the log names cam0's recipe.
    let log = std::fs::read_to_string(tmp.path().join("results/results.jsonl")).unwrap();
    let recs: Vec<FrameRecord> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(recs.iter().filter(|r| r.camera == "cam0").all(|r| r.recipe.is_some()));
    assert!(recs.iter().filter(|r| r.camera == "cam1").all(|r| r.recipe.is_none()));
}

#[test]
fn recipe_config_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let good = config_text(tmp.path(), 1502, "a");
    for (text, key) in [
        (good.replace("active: a", "active: z"), "cameras[0].active"),
        (good.replace("{name: b,", "{name: a,"), "cameras[0].recipes[1].name"),
        (good.replace("{name: b,", "{name: 'b.x',"), "cameras[0].recipes[1].name"),
        (good.replace("threshold: 1000000", "threshold: .nan"), "cameras[0].recipes[1].threshold"),
        (good.replace("{name: b,", "{name: b, colour: red,"), "cameras[0]"),
    ] {
        let e = format!("{:#}", StationConfig::from_yaml(Path::new("test.yaml"), &text).unwrap_err());
        assert!(e.starts_with("test.yaml") && e.contains(key), "{key}: {e}");
    }
    // Without the camera's `bundle` every recipe needs its own.
    let text = good.replacen(&format!("    bundle: {}\n", root().join("onnx/tiny").display()), "", 1);
    let e = format!("{:#}", StationConfig::from_yaml(Path::new("test.yaml"), &text).unwrap_err());
    assert!(e.contains("cameras[0].recipes[0].bundle"), "{e}");
    // A recipe's keys over the camera's.
    let c = config(&good);
    let views = c.cameras[0].recipe_views();
    assert_eq!(views[1].0.as_deref(), Some("b"));
    assert_eq!((views[1].1.glad.steps, views[1].1.glad.tau, views[1].1.threshold), (Some(3), Some(0.0), Some(1e6)));
    assert_eq!(c.cameras[0].active_recipe(), 0);
}

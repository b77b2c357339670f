//! `glad cameras`: the V4L2 devices, their driver, card name, formats, frame sizes and rates.

use std::path::Path;

use anyhow::Result;

use crate::sources::v4l2;

/// Lists the `video*` nodes in `dir` (normally /dev); says so plainly when there are none.
pub fn run(dir: &Path) -> Result<bool> {
    let nodes = v4l2::video_nodes(dir);
    if nodes.is_empty() {
        println!("no cameras: no {}/video* devices (is a camera plugged in, and is its driver loaded?)", dir.display());
        return Ok(true);
    }
    for p in nodes {
        let info = v4l2::query(&p);
        match &info.error {
            Some(e) => println!("{}: cannot query: {e}", p.display()),
            None => {
                println!("{}: {} (driver {}, bus {})", p.display(), info.card, info.driver, info.bus);
                if info.formats.is_empty() {
                    println!("  no capture formats (a metadata or output node)");
                }
                for f in &info.formats {
                    println!("  {} ({})", f.fourcc, f.description);
                    for (size, rates) in &f.sizes {
                        println!("    {size}: {}", if rates.is_empty() { "-".to_string() } else { rates.join(", ") });
                    }
                }
            }
        }
    }
    Ok(true)
}

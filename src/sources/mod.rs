//! Where images and frames come from. `walk` lists image files under paths (every command,
//! and the station's replay source, use it).

pub mod walk;

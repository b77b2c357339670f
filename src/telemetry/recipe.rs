//! Recipes: which of a camera's recipes (config `cameras[i].recipes`) is active. The PLC's
//! holding register, `PUT /api/recipe` and a config reload switch it here; the station reads
//! it for every frame it takes, so a switch applies from the next frame (every engine of every
//! recipe is loaded at start: no load on a switch).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Why a switch was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecipeError {
    #[error("camera `{0}` has no recipes (add `recipes:` to it in the station config)")]
    NoRecipes(String),
    #[error("camera `{camera}`: no recipe `{recipe}` (its recipes: {known})")]
    UnknownRecipe { camera: String, recipe: String, known: String },
    #[error("camera `{camera}`: recipe number {number} is not 1..={count}")]
    OutOfRange { camera: String, number: u64, count: usize },
}

#[derive(Debug)]
struct CamRecipes {
    names: Vec<String>,
    active: Arc<AtomicUsize>,
}

impl CamRecipes {
    fn view(&self) -> RecipeView {
        let i = self.active.load(Ordering::Acquire);
        RecipeView { recipes: self.names.clone(), active: self.names[i].clone(), number: i + 1 }
    }
}

/// The recipes of every camera that has some, and the active one of each.
#[derive(Debug, Default)]
pub struct Recipes {
    cams: Mutex<BTreeMap<String, CamRecipes>>,
}

/// A camera's recipes as the HTTP face and the PLC see them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecipeView {
    pub recipes: Vec<String>,
    pub active: String,
    /// The active recipe's number (its position in the list, from 1): the Modbus register's value.
    pub number: usize,
}

impl Recipes {
    /// Registers `camera`'s recipe names with `active` in force (at start); the station keeps
    /// the returned cell and reads it per frame.
    pub fn register(&self, camera: &str, names: Vec<String>, active: usize) -> Arc<AtomicUsize> {
        let cell = Arc::new(AtomicUsize::new(active.min(names.len().saturating_sub(1))));
        self.cams.lock().expect("recipes lock").insert(camera.to_string(), CamRecipes { names, active: cell.clone() });
        cell
    }

    /// The active recipe of `camera` (`None`: it has none).
    pub fn view(&self, camera: &str) -> Option<RecipeView> {
        self.cams.lock().expect("recipes lock").get(camera).map(CamRecipes::view)
    }

    /// Every camera with recipes.
    pub fn all(&self) -> BTreeMap<String, RecipeView> {
        self.cams.lock().expect("recipes lock").iter().map(|(n, c)| (n.clone(), c.view())).collect()
    }

    /// Makes recipe `name` active on `camera`; `by` says who asked (logged). Returns the view
    /// after the switch.
    pub fn select(&self, camera: &str, name: &str, by: &str) -> Result<RecipeView, RecipeError> {
        let i = {
            let cams = self.cams.lock().expect("recipes lock");
            let c = self.known(&cams, camera)?;
            c.names.iter().position(|n| n == name).ok_or_else(|| RecipeError::UnknownRecipe {
                camera: camera.into(),
                recipe: name.into(),
                known: c.names.join(", "),
            })?
        };
        self.set(camera, i, by)
    }

    /// Makes recipe number `number` (from 1) active: the PLC's register write.
    pub fn select_number(&self, camera: &str, number: u64, by: &str) -> Result<RecipeView, RecipeError> {
        let count = {
            let cams = self.cams.lock().expect("recipes lock");
            self.known(&cams, camera)?.names.len()
        };
        if number == 0 || number > count as u64 {
            return Err(RecipeError::OutOfRange { camera: camera.into(), number, count });
        }
        self.set(camera, number as usize - 1, by)
    }

    fn known<'a>(&self, cams: &'a BTreeMap<String, CamRecipes>, camera: &str) -> Result<&'a CamRecipes, RecipeError> {
        cams.get(camera).ok_or_else(|| RecipeError::NoRecipes(camera.into()))
    }

    fn set(&self, camera: &str, i: usize, by: &str) -> Result<RecipeView, RecipeError> {
        let cams = self.cams.lock().expect("recipes lock");
        let c = self.known(&cams, camera)?;
        let was = c.active.swap(i, Ordering::AcqRel);
        if was != i {
            tracing::info!(camera, from = %c.names[was], to = %c.names[i], by, "recipe switched");
        }
        Ok(c.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_by_name_and_number_moves_the_shared_cell() {
        let r = Recipes::default();
        let cell = r.register("cam0", vec!["a".into(), "b".into()], 0);
        assert_eq!(r.view("cam0").unwrap().active, "a");
        assert_eq!(r.select("cam0", "b", "test").unwrap().number, 2);
        assert_eq!(cell.load(Ordering::Acquire), 1);
        assert_eq!(r.select_number("cam0", 1, "test").unwrap().active, "a");
        assert_eq!(cell.load(Ordering::Acquire), 0);
        assert!(r.view("cam1").is_none());
        assert_eq!(r.all().len(), 1);
    }

    #[test]
    fn refusals_name_camera_and_choices() {
        let r = Recipes::default();
        r.register("cam0", vec!["a".into(), "b".into()], 1);
        let e = r.select("cam0", "c", "test").unwrap_err().to_string();
        assert!(e.contains("cam0") && e.contains("`c`") && e.contains("a, b"), "{e}");
        assert_eq!(r.select_number("cam0", 3, "test").unwrap_err(), RecipeError::OutOfRange { camera: "cam0".into(), number: 3, count: 2 });
        assert!(matches!(r.select_number("cam0", 0, "test"), Err(RecipeError::OutOfRange { .. })));
        assert!(matches!(r.select("cam9", "a", "test"), Err(RecipeError::NoRecipes(_))));
        // A refused switch leaves the active recipe alone.
        assert_eq!(r.view("cam0").unwrap().active, "b");
    }
}

//! Evaluation: datasets in the MVTec layout, the paper's metrics, scoring and the baseline.

pub mod dataset;
pub mod fidelity;
pub mod metrics;
pub mod score;
pub mod threshold;

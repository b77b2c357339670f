//! Evaluation: MVTec-layout datasets, the paper's metrics, and the feature-only baseline.

pub mod baseline;
pub mod dataset;
pub mod metrics;

pub mod dataset;
pub mod metrics;

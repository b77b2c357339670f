//! The station: cameras → frame policy → batcher per bundle → engine → verdict → sinks.

pub mod trigger;

pub use trigger::Triggers;

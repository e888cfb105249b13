//! apflab's command-line front end as a library: experiment configs, running
//! one config, the results file, grids of runs (matrices), reports and the
//! paper's generated figures.
//!
//! The `apflab` binary is a thin clap layer over these modules.

pub mod boot_sharing;
pub mod catalog;
pub mod config;
mod git;
pub mod grouping;
pub mod kendall;
pub mod linux_guest;
pub mod matrix;
pub mod page_server;
pub mod paper;
pub mod plot;
pub mod policy_bench;
pub mod policy_calls;
pub mod policy_config;
pub mod report;
pub mod result;
pub mod runner;
pub mod slurm;
pub mod stats;
pub mod trace;

pub use config::{Config, ConfigError, LoadedConfig};
pub use result::RunResult;
pub use runner::{RunError, SectionConflict, execute, run_config};

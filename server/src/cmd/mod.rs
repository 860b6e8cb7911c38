//! One module per subcommand: its arguments and its `run`.

pub mod bench;
pub mod device;
pub mod generate;
pub mod group;
pub mod init_model;
pub mod place;
pub mod place_plan;
pub mod place_profile;
pub mod router;
pub mod serve;
pub mod sources;
pub mod trace;
pub mod worker;

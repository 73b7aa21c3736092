pub mod model;
pub mod state;

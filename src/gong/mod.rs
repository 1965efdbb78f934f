pub mod client;
pub mod models;
pub mod references;
pub mod request_id;

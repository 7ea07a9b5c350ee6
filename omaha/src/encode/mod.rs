//! Serialising typed messages: requests in update_engine's shape, responses in Nebraska's.

pub(crate) mod request;
pub(crate) mod response;

/// The XML declaration both sides send.
pub(crate) const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

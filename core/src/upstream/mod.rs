//! The request to Bedrock: how the client's is rewritten, how it is authenticated (and with which credentials), and what a
//! host's own reply in Bedrock's place means for billing.

pub mod credentials;
pub mod host_reply;
pub mod request;
pub mod signing;

//! A Bedrock runtime emulator for Tollgate's integration tests and `make run`.
//!
//! It answers the four Bedrock runtime operations (`converse`, `converse-stream`, `invoke`,
//! `invoke-with-response-stream`) the way Amazon Bedrock does, closely enough for boto3 to parse
//! the answers, and it is the tests' oracle: it verifies the gateway's SigV4 signatures with
//! its own, independent verifier ([`sigv4_verify`]) and keeps a [`ledger`] of exactly what it
//! served. Its behaviour is deterministic and steered by [`directives`] embedded in the request
//! body (`[[emu:output=5]]`, `[[emu:throttle]]`, …).
//!
//! With a [`credentials::Rotation`] it also serves rotating credentials as EC2's instance
//! metadata service and the container credentials endpoint do, and accepts each set only while
//! it is valid.
//!
//! Only [`server`] (behind the default `server` feature) needs tokio and hyper; the other
//! modules are plain sans-IO code that other crates can use as a dev-dependency with
//! `default-features = false`.

pub mod credentials;
pub mod directives;
pub mod eventstream_encode;
pub mod families;
pub mod ledger;
pub mod responses;
#[cfg(feature = "server")]
pub mod server;
pub mod sigv4_verify;

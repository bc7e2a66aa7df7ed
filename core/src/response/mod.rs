//! Bedrock's answer: AWS EventStream decoding and the usage meter that reads token counts off
//! every response.

pub mod eventstream;
pub mod meter;
pub mod relay;

//! Bedrock's answer: AWS EventStream decoding, the usage meter that reads token counts off
//! every response, and the relay that decides what the client gets of each chunk.

pub mod eventstream;
pub mod meter;
pub mod relay;

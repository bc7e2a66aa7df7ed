//! Reading the client's request: which route, which key, which model, which headers go on,
//! and what the body asks for (its output limit, options that change the price, images).

pub mod auth;
pub mod body;
pub mod headers;
pub mod images;
pub mod model_family;
pub mod model_id;
pub mod operation;
pub mod options;
pub mod route;

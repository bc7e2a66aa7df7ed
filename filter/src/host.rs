//! Envoy host calls, wrapped so that nothing can panic.
//!
//! proxy-wasm's `Context` helpers `unwrap()` every host call, and `hostcalls::get_map` panics
//! on a header value that is not UTF-8; a panic traps the VM and fails every later request on
//! the worker. So this module uses only the `Result`-returning host calls and the byte-valued
//! header map.

use std::time::{SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};
use tollgate_core::error::Reply;
use tollgate_core::store::{Cas, CasStore, StoreError};

/// Request or response headers, every one of them: lowercase names, and values decoded as
/// UTF-8 with invalid bytes replaced (U+FFFD). None is dropped, so the allowlist of what goes
/// upstream sees every name (a value that is not UTF-8 cannot hide a header from it), and a
/// key that is not UTF-8 simply matches no key. The filter only removes client headers by
/// name and sets its own; it never writes a decoded client value back.
pub fn headers(map: MapType) -> Vec<(String, String)> {
    match hostcalls::get_map_bytes(map) {
        Ok(pairs) => pairs
            .into_iter()
            .map(|(mut name, value)| {
                // Envoy's names are lowercase already (HTTP/2 and its HTTP/1 codec).
                name.make_ascii_lowercase();
                let value = match String::from_utf8(value) {
                    Ok(v) => v,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                };
                (name, value)
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Envoy's `response.code_details`: `via_upstream` for the upstream's own response, else why
/// Envoy answered itself (`upstream_response_timeout`, …). `None` if Envoy does not say.
pub fn response_code_details() -> Option<String> {
    match hostcalls::get_property(vec!["response", "code_details"]) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok(),
        _ => None,
    }
}

/// One header's value, decoded as UTF-8 (invalid bytes replaced); `None` if absent.
pub fn header_value(map: MapType, name: &str) -> Option<String> {
    match hostcalls::get_map_value_bytes(map, name) {
        Ok(Some(v)) => Some(String::from_utf8_lossy(&v).into_owned()),
        _ => None,
    }
}

/// A value of the request's filter state that a Tollgate filter set (`set_property`), which
/// every filter of the request sees, the upstream filters of each attempt included. `None`
/// if unset or empty.
pub fn property(name: &str) -> Option<Vec<u8>> {
    match hostcalls::get_property(vec![name]) {
        Ok(Some(v)) if !v.is_empty() => Some(v),
        _ => None,
    }
}

pub fn set_property(name: &str, value: &[u8]) {
    if let Err(e) = hostcalls::set_property(vec![name], Some(value)) {
        log(
            LogLevel::Error,
            &format!("tollgate: could not set filter state {name}: {e:?}"),
        );
    }
}

pub fn buffer(kind: BufferType, size: usize) -> Vec<u8> {
    match hostcalls::get_buffer(kind, 0, size) {
        Ok(Some(bytes)) => bytes,
        _ => Vec::new(),
    }
}

/// Replaces the buffered request body (headers still paused, so `content-length` can follow).
/// False if the host refused (no body buffered, for one).
pub fn replace_request_body(old_size: usize, body: &[u8]) -> bool {
    match hostcalls::set_buffer(BufferType::HttpRequestBody, 0, old_size, body) {
        Ok(()) => true,
        Err(e) => {
            log(
                LogLevel::Error,
                &format!("tollgate: could not replace the request body: {e:?}"),
            );
            false
        }
    }
}

/// Drops every request trailer (called from the trailers callback).
pub fn clear_request_trailers() {
    if let Err(e) = hostcalls::set_map(MapType::HttpRequestTrailers, Vec::new()) {
        log(
            LogLevel::Error,
            &format!("tollgate: could not drop the request trailers: {e:?}"),
        );
    }
}

/// Replaces the current response chunk (body callbacks that return Continue).
pub fn replace_response_body(old_size: usize, body: &[u8]) {
    if let Err(e) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, old_size, body) {
        log(
            LogLevel::Error,
            &format!("tollgate: could not replace a response chunk: {e:?}"),
        );
    }
}

/// Resets the HTTP stream, upstream included.
pub fn reset_stream() {
    if let Err(e) = hostcalls::reset_http_response() {
        log(
            LogLevel::Error,
            &format!("tollgate: could not reset the stream: {e:?}"),
        );
    }
}

pub fn now() -> SystemTime {
    hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
}

pub fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Traps the VM, as a crash does (the test hook [`tollgate_core::exchange::TestFault`]):
/// Envoy then fails it, and nothing of its requests in flight settles.
pub fn trap() -> ! {
    log(
        LogLevel::Warn,
        "tollgate: test hook: trapping the VM after admission",
    );
    std::process::abort()
}

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Sends a local reply. Envoy defers it until the callback returns; callers return `Pause`.
pub fn reply(r: &Reply) {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    if let Err(e) = hostcalls::send_http_response(u32::from(r.status), headers, Some(&r.body)) {
        log(
            LogLevel::Error,
            &format!("tollgate: could not send a local reply: {e:?}"),
        );
    }
}

pub fn set_header(map: MapType, name: &str, value: &str) {
    if let Err(e) = hostcalls::set_map_value(map, name, Some(value)) {
        log(
            LogLevel::Error,
            &format!("tollgate: could not set header {name}: {e:?}"),
        );
    }
}

pub fn remove_header(map: MapType, name: &str) {
    let _ = hostcalls::remove_map_value(map, name);
}

/// Envoy shared data: process-wide, shared by every worker VM with the same `vm_id`.
pub struct SharedData;

impl CasStore for SharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            // An empty value is what `remove` leaves behind: treat it as absent.
            Ok((Some(v), Some(cas))) if !v.is_empty() => Ok(Some((v, cas))),
            Ok(_) => Ok(None),
            Err(e) => Err(StoreError::Host(format!("{e:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(proxy_wasm::types::Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(e) => Err(StoreError::Host(format!("{e:?}"))),
        }
    }

    fn create(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        hostcalls::set_shared_data(key, Some(value), None)
            .map_err(|e| StoreError::Host(format!("{e:?}")))
    }
}

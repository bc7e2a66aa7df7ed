//! One Wasm filter, several layers of Tollgate's per-request host interaction, chosen by the
//! plugin configuration (a plain string):
//!
//! * `noop`    — every callback returns Continue: the cost of a V8 filter being there at all
//!               (context create/delete, the callbacks Envoy makes into the VM).
//! * `headers` — plus reading the request and response header maps (as Tollgate does).
//! * `buffer`  — plus holding the headers until the whole body is buffered, reading the body,
//!               rewriting `:path`, `:authority` and three signature-sized headers, removing a
//!               header (Tollgate's request path), and copying each response chunk. The
//!               client's bearer key is left in place so that the emulator accepts the request.
//! * `log`     — plus one ~450-byte info log line per request (Tollgate's usage record).
//! * `shared`  — plus a shared-data read and CAS write of a ~300-byte value and ten metric
//!               increments (Tollgate's totals and metrics).
//!
//! The difference between `shared` and Tollgate itself is tollgate-core's own work in V8.

use std::cell::Cell;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Layer {
    Noop,
    Headers,
    Buffer,
    Log,
    Shared,
}

thread_local! {
    static LAYER: Cell<Layer> = const { Cell::new(Layer::Noop) };
    static METRICS: Cell<[u32; 10]> = const { Cell::new([0; 10]) };
}

fn layer() -> Layer {
    LAYER.with(|l| l.get())
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let cfg = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let l = match cfg.as_slice() {
            b"headers" => Layer::Headers,
            b"buffer" => Layer::Buffer,
            b"log" => Layer::Log,
            b"shared" => Layer::Shared,
            _ => Layer::Noop,
        };
        LAYER.with(|c| c.set(l));
        let mut ids = [0u32; 10];
        for (i, id) in ids.iter_mut().enumerate() {
            *id = hostcalls::define_metric(MetricType::Counter, &format!("ablation_counter_{i};key=bench;model=claude-fast"))
                .unwrap_or(0);
        }
        METRICS.with(|m| m.set(ids));
        let _ = hostcalls::set_shared_data("ablation/totals", Some(&[b'0'; 300]), None);
        true
    }
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { path: String::new() }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    path: String,
}
impl Context for Http {}

fn headers(map: MapType) -> usize {
    hostcalls::get_map_bytes(map).map(|h| h.len()).unwrap_or(0)
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, eos: bool) -> Action {
        if layer() < Layer::Headers {
            return Action::Continue;
        }
        let h = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        if let Some((_, v)) = h.iter().find(|(n, _)| n == ":path") {
            self.path = String::from_utf8_lossy(v).into_owned();
        }
        let _ = hostcalls::get_current_time();
        if layer() < Layer::Buffer || eos {
            return Action::Continue;
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if layer() < Layer::Buffer {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten();
        std::hint::black_box(body);
        let m = MapType::HttpRequestHeaders;
        let _ = hostcalls::get_current_time();
        // The client's bearer key stays (the emulator accepts it); the same number of header edits.
        let _ = hostcalls::remove_map_value(m, "x-api-key");
        let _ = hostcalls::set_map_value(m, ":path", Some(&self.path));
        let _ = hostcalls::set_map_value(m, ":authority", Some("127.0.0.1:9100"));
        let _ = hostcalls::set_map_value(m, "x-amz-date", Some("20261122T223000Z"));
        let _ = hostcalls::set_map_value(m, "x-amz-content-sha256", Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
        let _ = hostcalls::set_map_value(m, "x-ablation-authorization", Some("AWS4-HMAC-SHA256 Credential=AKIDTOLLGATEBENCH/20261122/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if layer() >= Layer::Headers {
            std::hint::black_box(headers(MapType::HttpResponseHeaders));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, _eos: bool) -> Action {
        if layer() >= Layer::Buffer && size > 0 {
            std::hint::black_box(hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size).ok());
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if layer() < Layer::Log {
            return;
        }
        let _ = hostcalls::get_current_time();
        let _ = hostcalls::log(LogLevel::Info, concat!(
            "tollgate.usage {\"request_id\":\"6f1c9d2e-8f0a-4b7e-9c2d-3a4b5c6d7e8f\",\"key_id\":\"bench\",",
            "\"model\":\"claude-fast\",\"model_id\":\"us.anthropic.claude-haiku-4-5-20251001-v1:0\",",
            "\"operation\":\"converse\",\"streamed\":false,\"status\":200,\"input_tokens\":256,",
            "\"output_tokens\":256,\"cache_read_tokens\":0,\"cache_write_tokens\":0,\"cost_pico_usd\":1536000000,",
            "\"usage_source\":\"reported\",\"priced_as\":\"model\",\"request_bytes\":1024,\"latency_ms\":0}"));
        if layer() < Layer::Shared {
            return;
        }
        if let Ok((Some(v), cas)) = hostcalls::get_shared_data("ablation/totals") {
            let _ = hostcalls::set_shared_data("ablation/totals", Some(&v), cas);
        }
        for id in METRICS.with(|m| m.get()) {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

//! Tollgate as a proxy-wasm HTTP filter: adapts Envoy's callbacks to `tollgate_core`.

mod configuration;
mod credentials;
mod host;
mod http;
mod metrics;
pub mod stats;

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use tollgate_core::accounting::totals;
use tollgate_core::config::{Config, UpstreamAuth};
use tollgate_core::quota;
use tollgate_core::quota::counters::CasCounters;
use tollgate_core::upstream::signing::SigningKeyCache;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root {
        config: Err(not_configured()),
        signing_keys: Rc::default(),
        refresher: None,
    }) });
}}

fn not_configured() -> Rc<str> {
    Rc::from("the gateway has no configuration")
}

struct Root {
    /// The validated configuration, or why there is none (then every request gets a 500).
    config: Result<Rc<Config>, Rc<str>>,
    /// The signing key derived for the day, kept for every request of this VM.
    signing_keys: Rc<RefCell<SigningKeyCache>>,
    /// Keeps fetched credentials fresh, when the configuration's come from an endpoint.
    refresher: Option<credentials::Refresher>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(r) = self.refresher.as_mut() {
            r.on_response(token_id, num_headers, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = host::buffer(BufferType::PluginConfiguration, size);
        // Credentials may come from `vm_config.environment_variables`.
        let env = |name: &str| std::env::var(name).ok();
        match Config::parse(&bytes, &env) {
            Ok(c) => {
                prepare_state(&c);
                self.refresher = match &c.upstream_auth {
                    UpstreamAuth::Fetched(source) => {
                        Some(credentials::Refresher::new(source.clone()))
                    }
                    _ => None,
                };
                let tick = if self.refresher.is_some() {
                    credentials::FIRST_TICK
                } else {
                    std::time::Duration::ZERO
                };
                let _ = hostcalls::set_tick_period(tick);
                self.config = Ok(Rc::new(c));
                true
            }
            Err(e) => match configuration::on_invalid(&bytes) {
                configuration::Invalid::Reject => {
                    // Envoy rejects the update: the configuration serving now stays.
                    host::log(
                        LogLevel::Critical,
                        &format!(
                            "tollgate: {e}; configuration update rejected, the previous configuration keeps serving"
                        ),
                    );
                    false
                }
                configuration::Invalid::FailClosed => {
                    // Nothing valid to keep serving: keep the filter loaded so every request
                    // gets a clear 500 instead of the listener disappearing or traffic
                    // passing unauthenticated.
                    host::log(
                        LogLevel::Critical,
                        &format!("tollgate: {e}; answering every request with 500"),
                    );
                    self.config = Err(Rc::from(e.to_string()));
                    true
                }
            },
        }
    }

    fn on_tick(&mut self) {
        if let Some(r) = self.refresher.as_mut() {
            r.on_tick();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(http::Http::new(
            self.config.clone(),
            self.signing_keys.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Creates the usage totals and quota counters of keys that have none yet (a new key, or the
/// first configuration), and records that a valid configuration has served. Existing state is
/// never touched: a worker starting or a live update carries totals and quotas over.
fn prepare_state(c: &Config) {
    let counters = c
        .api_keys
        .iter()
        .flat_map(quota::counter_names)
        .collect::<Vec<_>>();
    let created = totals::ensure(&host::SharedData, c.api_keys.iter().map(|k| &k.id))
        .and_then(|()| CasCounters(&host::SharedData).ensure(counters.iter().map(String::as_str)));
    if let Err(e) = created {
        host::log(
            LogLevel::Error,
            &format!("tollgate: could not create usage totals and quota counters: {e}"),
        );
    }
    configuration::mark_served();
    host::log(
        LogLevel::Info,
        &format!(
            "tollgate: configured: region {}, upstream {}, {} keys, {} aliases",
            c.region,
            c.upstream_host,
            c.api_keys.len(),
            c.aliases.len()
        ),
    );
    if c.test_hooks {
        host::log(
            LogLevel::Warn,
            "tollgate: test_hooks is on: clients can set the quota clock \
             (x-tollgate-test-now-ms); never in production",
        );
    }
}

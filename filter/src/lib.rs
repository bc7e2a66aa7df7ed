//! Tollgate as a proxy-wasm HTTP filter: adapts Envoy's callbacks to `tollgate_core`.

mod host;
mod http;
mod metrics;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use tollgate_core::config::Config;
use tollgate_core::counters::CasCounters;
use tollgate_core::{quota, totals};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: Err(not_configured()) }) });
}}

fn not_configured() -> Rc<str> {
    Rc::from("the gateway has no configuration")
}

struct Root {
    /// The validated configuration, or why there is none (then every request gets a 500).
    config: Result<Rc<Config>, Rc<str>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = host::buffer(BufferType::PluginConfiguration, size);
        // Credentials may come from `vm_config.environment_variables`.
        let env = |name: &str| std::env::var(name).ok();
        self.config = match Config::parse(&bytes, &env) {
            Ok(c) => {
                let counters = c
                    .api_keys
                    .iter()
                    .flat_map(quota::counter_names)
                    .collect::<Vec<_>>();
                let created = totals::ensure(&host::SharedData, c.api_keys.iter().map(|k| &k.id))
                    .and_then(|()| {
                        CasCounters(&host::SharedData).ensure(counters.iter().map(String::as_str))
                    });
                if let Err(e) = created {
                    host::log(
                        LogLevel::Error,
                        &format!("tollgate: could not create usage totals and quota counters: {e}"),
                    );
                }
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
                Ok(Rc::new(c))
            }
            Err(e) => {
                // Fail closed: keep the filter loaded so every request gets a clear 500
                // instead of the listener disappearing or traffic passing unauthenticated.
                host::log(
                    LogLevel::Critical,
                    &format!("tollgate: {e}; answering every request with 500"),
                );
                Err(Rc::from(e.to_string()))
            }
        };
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(http::Http::new(self.config.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

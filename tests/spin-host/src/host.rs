//! Per-instance store data and the host side of the Spin-specific imports:
//! `spin:key-value/key-value@3.0.0`, `spin:variables/variables@3.0.0` (both p3 `async func`s)
//! and `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft2` (sync in WIT, async on the host).

use crate::kv::{self, Backend, KvError, StoreManager, SwapError};
use crate::outbound::AllowedHosts;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::{RequestOptions, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};
use wasmtime_wasi_http::WasiHttpCtx;

wasmtime::component::bindgen!({
    path: "wit",
    world: "host",
    imports: { default: async | trappable },
    with: {
        "spin:key-value/key-value.store": SpinStore,
        "wasi:keyvalue/store.bucket": Bucket,
        "wasi:keyvalue/atomics.cas": CasHandle,
    },
});

use spin::key_value::key_value as spin_kv;
use spin::variables::variables as spin_vars;
use wasi::keyvalue::{atomics as wkv_atomics, batch as wkv_batch, store as wkv_store};

/// Resource behind `spin:key-value/key-value.store`.
pub struct SpinStore(Backend);
/// Resource behind `wasi:keyvalue/store.bucket`.
pub struct Bucket(Backend);
/// Resource behind `wasi:keyvalue/atomics.cas`.
pub struct CasHandle(kv::Cas);

/// Process-wide configuration shared by all instances.
pub struct App {
    pub kv: StoreManager,
    pub variables: HashMap<String, String>,
    pub allowed_hosts: Arc<AllowedHosts>,
    pub env: Vec<(String, String)>,
}

/// Store data of one component instance (one request).
pub struct State {
    pub app: Arc<App>,
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub hooks: OutboundHooks,
}

impl State {
    pub fn new(app: Arc<App>) -> Self {
        let mut b = WasiCtx::builder();
        // Guest stdout and stderr both go to the host's stderr (host stdout carries the
        // `listening on` line only).
        b.stdout(tokio::io::stderr()).stderr(tokio::io::stderr());
        b.envs(&app.env);
        let hooks = OutboundHooks {
            allowed: app.allowed_hosts.clone(),
        };
        State {
            app,
            table: ResourceTable::new(),
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            hooks,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound HTTP: Spin's `allowed_outbound_hosts` check in front of wasmtime-wasi-http's
/// default sender (forbidden headers, `host` handling, timeouts are wasmtime's defaults).
pub struct OutboundHooks {
    allowed: Arc<AllowedHosts>,
}

type BoxFut<T> = Box<dyn std::future::Future<Output = T> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<UnsyncBoxBody<Bytes, ErrorCode>>,
        options: Option<RequestOptions>,
        fut: BoxFut<Result<(), ErrorCode>>,
    ) -> BoxFut<
        Result<
            (
                http::Response<UnsyncBoxBody<Bytes, ErrorCode>>,
                BoxFut<Result<(), ErrorCode>>,
            ),
            wasmtime_wasi::TrappableError<ErrorCode>,
        >,
    > {
        _ = fut;
        let allowed = self.allowed.allows(request.uri());
        let uri = request.uri().to_string();
        Box::new(async move {
            use http_body_util::BodyExt;
            if !allowed {
                eprintln!(
                    "tollgate-spin-host: denied outbound request to {uri} (not in --allowed-outbound-host)"
                );
                return Err(ErrorCode::HttpRequestDenied.into());
            }
            let (res, io) = wasmtime_wasi_http::p3::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as BoxFut<Result<(), ErrorCode>>,
            ))
        })
    }
}

/// `HasData` marker for all Spin imports: the store data is `State`.
pub struct Spin;

impl HasData for Spin {
    type Data<'a> = &'a mut State;
}

pub fn add_to_linker(linker: &mut wasmtime::component::Linker<State>) -> wasmtime::Result<()> {
    fn get(s: &mut State) -> &mut State {
        s
    }
    spin_kv::add_to_linker::<State, Spin>(linker, get)?;
    spin_vars::add_to_linker::<State, Spin>(linker, get)?;
    wkv_store::add_to_linker::<State, Spin>(linker, get)?;
    wkv_atomics::add_to_linker::<State, Spin>(linker, get)?;
    wkv_batch::add_to_linker::<State, Spin>(linker, get)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// spin:key-value/key-value@3.0.0

fn spin_err(e: KvError) -> spin_kv::Error {
    match e {
        KvError::AccessDenied => spin_kv::Error::AccessDenied,
        KvError::Other(m) => spin_kv::Error::Other(m),
    }
}

fn store_backend<T>(
    accessor: &Accessor<T, Spin>,
    store: &Resource<SpinStore>,
) -> wasmtime::Result<Backend> {
    accessor.with(|mut a| Ok(a.get().table.get(store)?.0.clone()))
}

impl spin_kv::Host for State {}
impl spin_kv::HostStore for State {
    async fn drop(&mut self, rep: Resource<SpinStore>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl<T> spin_kv::HostStoreWithStore<T> for Spin {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<SpinStore>, spin_kv::Error>> {
        let app = accessor.with(|mut a| a.get().app.clone());
        match app.kv.open(&label).await {
            Ok(b) => {
                let r = accessor.with(|mut a| a.get().table.push(SpinStore(b)))?;
                Ok(Ok(r))
            }
            Err(e) => Ok(Err(spin_err(e))),
        }
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        self_: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_kv::Error>> {
        let b = store_backend(accessor, &self_)?;
        Ok(b.get(&key).await.map_err(spin_err))
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        self_: Resource<SpinStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        let b = store_backend(accessor, &self_)?;
        Ok(b.set(&key, &value).await.map_err(spin_err))
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        self_: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        let b = store_backend(accessor, &self_)?;
        Ok(b.delete(&key).await.map_err(spin_err))
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        self_: Resource<SpinStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, spin_kv::Error>> {
        let b = store_backend(accessor, &self_)?;
        Ok(b.exists(&key).await.map_err(spin_err))
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        self_: Resource<SpinStore>,
    ) -> wasmtime::Result<(
        StreamReader<String>,
        FutureReader<Result<(), spin_kv::Error>>,
    )> {
        let b = store_backend(accessor, &self_)?;
        let (keys, result) = match b.get_keys().await {
            Ok(keys) => (keys, Ok(())),
            Err(e) => (Vec::new(), Err(spin_err(e))),
        };
        accessor.with(|mut a| {
            let stream = StreamReader::new(&mut a, keys)?;
            let fut = FutureReader::new(&mut a, async move { Ok::<_, wasmtime::Error>(result) })?;
            Ok((stream, fut))
        })
    }
}

// ---------------------------------------------------------------------------------------
// spin:variables/variables@3.0.0

/// Spin's variable-name rules (spin-expressions `Key::validate`).
fn validate_variable_name(key: &str) -> Result<(), String> {
    let reason = if key.is_empty() {
        "must not be empty".to_string()
    } else if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        format!(
            "invalid character {c:?}. Variable names may contain only lower-case letters, numbers, and underscores."
        )
    } else if !key.as_bytes()[0].is_ascii_lowercase() {
        "must start with a lowercase ASCII letter".to_string()
    } else if !key.as_bytes()[key.len() - 1].is_ascii_alphanumeric() {
        "must end with a lowercase ASCII letter or digit".to_string()
    } else if key.contains("__") {
        "must not contain multiple consecutive underscores".to_string()
    } else {
        return Ok(());
    };
    Err(format!("{key:?}: {reason}"))
}

impl spin_vars::Host for State {}

impl<T> spin_vars::HostWithStore<T> for Spin {
    async fn get(
        accessor: &Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, spin_vars::Error>> {
        if let Err(msg) = validate_variable_name(&name) {
            return Ok(Err(spin_vars::Error::InvalidName(msg)));
        }
        let app = accessor.with(|mut a| a.get().app.clone());
        // Precedence as in Spin: --variable beats the SPIN_VARIABLE_* environment.
        if let Some(v) = app.variables.get(&name) {
            return Ok(Ok(v.clone()));
        }
        if let Ok(v) = std::env::var(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())) {
            return Ok(Ok(v));
        }
        Ok(Err(spin_vars::Error::Undefined(format!(
            "no variable for {name:?}"
        ))))
    }
}

// ---------------------------------------------------------------------------------------
// wasi:keyvalue@0.2.0-draft2

fn wasi_err(e: KvError) -> wkv_store::Error {
    match e {
        KvError::AccessDenied => wkv_store::Error::AccessDenied,
        KvError::Other(m) => wkv_store::Error::Other(m),
    }
}

impl State {
    fn bucket(&self, r: &Resource<Bucket>) -> Result<Backend, wkv_store::Error> {
        self.table
            .get(r)
            .map(|b| b.0.clone())
            .map_err(|_| wkv_store::Error::NoSuchStore)
    }
}

impl wkv_store::Host for State {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, wkv_store::Error>> {
        match self.app.kv.open(&identifier).await {
            Ok(b) => Ok(Ok(self.table.push(Bucket(b))?)),
            Err(e) => Ok(Err(wasi_err(e))),
        }
    }
}

impl wkv_store::HostBucket for State {
    async fn get(
        &mut self,
        self_: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wkv_store::Error>> {
        let b = match self.bucket(&self_) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        Ok(b.get(&key).await.map_err(wasi_err))
    }

    async fn set(
        &mut self,
        self_: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wkv_store::Error>> {
        let b = match self.bucket(&self_) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        Ok(b.set(&key, &value).await.map_err(wasi_err))
    }

    async fn delete(
        &mut self,
        self_: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), wkv_store::Error>> {
        let b = match self.bucket(&self_) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        Ok(b.delete(&key).await.map_err(wasi_err))
    }

    async fn exists(
        &mut self,
        self_: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wkv_store::Error>> {
        let b = match self.bucket(&self_) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        Ok(b.exists(&key).await.map_err(wasi_err))
    }

    async fn list_keys(
        &mut self,
        self_: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<wkv_store::KeyResponse, wkv_store::Error>> {
        if cursor.is_some() {
            // Same as Spin.
            return Ok(Err(wkv_store::Error::Other(
                "list_keys: cursor not supported".to_owned(),
            )));
        }
        let b = match self.bucket(&self_) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        Ok(b.get_keys()
            .await
            .map(|keys| wkv_store::KeyResponse { keys, cursor: None })
            .map_err(wasi_err))
    }

    async fn drop(&mut self, rep: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl wkv_batch::Host for State {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, wkv_store::Error>> {
        let b = match self.bucket(&bucket) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        if keys.is_empty() {
            return Ok(Ok(vec![]));
        }
        Ok(b.get_many(keys).await.map_err(wasi_err))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), wkv_store::Error>> {
        let b = match self.bucket(&bucket) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        if key_values.is_empty() {
            return Ok(Ok(()));
        }
        Ok(b.set_many(key_values).await.map_err(wasi_err))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), wkv_store::Error>> {
        let b = match self.bucket(&bucket) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        if keys.is_empty() {
            return Ok(Ok(()));
        }
        Ok(b.delete_many(keys).await.map_err(wasi_err))
    }
}

impl wkv_atomics::Host for State {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wkv_store::Error>> {
        let b = match self.bucket(&bucket) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        Ok(b.increment(&key, delta).await.map_err(wasi_err))
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wkv_atomics::CasError>> {
        let CasHandle(cas) = self.table.delete(cas)?;
        let backend = cas.backend.clone();
        let key = cas.key.clone();
        match cas.swap(value).await {
            Ok(()) => Ok(Ok(())),
            // Like Spin: hand the guest a fresh CAS (current value re-captured) to retry with.
            Err(SwapError::CasFailed) => match backend.new_cas(&key).await {
                Ok(fresh) => {
                    let r = self.table.push(CasHandle(fresh))?;
                    Ok(Err(wkv_atomics::CasError::CasFailed(r)))
                }
                Err(e) => Ok(Err(wkv_atomics::CasError::StoreError(wasi_err(e)))),
            },
            Err(SwapError::Other(e)) => Ok(Err(wkv_atomics::CasError::StoreError(wasi_err(e)))),
        }
    }
}

impl wkv_atomics::HostCas for State {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, wkv_store::Error>> {
        let b = match self.bucket(&bucket) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        match b.new_cas(&key).await {
            Ok(cas) => Ok(Ok(self.table.push(CasHandle(cas))?)),
            Err(e) => Ok(Err(wasi_err(e))),
        }
    }

    async fn current(
        &mut self,
        self_: Resource<CasHandle>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wkv_store::Error>> {
        Ok(Ok(self.table.get(&self_)?.0.current()))
    }

    async fn drop(&mut self, rep: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

//! tollgate-spin-host: a Spin-compatible host (Spin 4.1 semantics, wasmtime 47.0.2) for one
//! spin-sdk 7 HTTP component. See README.md.

mod host;
mod kv;
mod outbound;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime::component::{Component, GuestTaskId, Linker};
use wasmtime::{Config, Engine, Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    self, HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept, ViewFn, WorkerExpiration,
    WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode as P3ErrorCode;
use wasmtime_wasi_http::p3::WasiHttpView;

use host::{App, State};

const USAGE: &str = "usage: tollgate-spin-host --component PATH.wasm [--listen ADDR] \
[--tls-cert FILE --tls-key FILE [--accept-plain-http]] \
[--variable NAME=VALUE]... [--key-value-store LABEL=memory|LABEL=redis://HOST:PORT/DB]... \
[--allowed-outbound-host URL]... [--env NAME=VALUE]...";

struct Args {
    component: String,
    listen: String,
    /// `spin up --tls-cert` / `--tls-key`: serve HTTPS instead of HTTP.
    tls_cert: Option<String>,
    tls_key: Option<String>,
    /// Test convenience (Spin has no such flag): with TLS on, a connection whose first byte
    /// is not a TLS handshake is served as plain HTTP on the same port.
    accept_plain_http: bool,
    variables: HashMap<String, String>,
    stores: Vec<(String, String)>,
    allowed: Vec<String>,
    env: Vec<(String, String)>,
}

fn split_kv(flag: &str, v: &str) -> anyhow::Result<(String, String)> {
    v.split_once('=')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| anyhow::anyhow!("{flag} expects NAME=VALUE, got {v:?}"))
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        component: String::new(),
        listen: std::env::var("SPIN_HTTP_LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into()),
        tls_cert: None,
        tls_key: None,
        accept_plain_http: false,
        variables: HashMap::new(),
        stores: Vec::new(),
        allowed: Vec::new(),
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (flag, None),
        };
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--accept-plain-http" {
            args.accept_plain_http = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--component" => args.component = value()?,
            "--listen" => args.listen = value()?,
            "--tls-cert" => args.tls_cert = Some(value()?),
            "--tls-key" => args.tls_key = Some(value()?),
            "--variable" => {
                let (k, v) = split_kv(&flag, &value()?)?;
                args.variables.insert(k, v);
            }
            "--key-value-store" => args.stores.push(split_kv(&flag, &value()?)?),
            "--allowed-outbound-host" => args.allowed.push(value()?),
            "--env" | "-e" => args.env.push(split_kv(&flag, &value()?)?),
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if args.component.is_empty() {
        anyhow::bail!("--component is required\n{USAGE}");
    }
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        anyhow::bail!("--tls-cert and --tls-key go together\n{USAGE}");
    }
    if args.accept_plain_http && args.tls_cert.is_none() {
        anyhow::bail!("--accept-plain-http needs --tls-cert and --tls-key\n{USAGE}");
    }
    Ok(args)
}

/// Instantiates a fresh store + instance for every request (Spin's model).
struct Server {
    engine: Engine,
    pre: ProxyPre<State>,
    app: Arc<App>,
}

/// One instance serves exactly one request, then runs until the guest has no more
/// work (spawned tasks that outlive the response), then is dropped.
struct OneRequest;

impl WorkerState for OneRequest {
    type StoreData = State;
    type RequestId = ();

    fn should_accept_request(&self, _concurrent: usize, total: usize) -> ShouldAccept {
        if total == 0 {
            ShouldAccept::Yes
        } else {
            ShouldAccept::Never
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, State>,
        _id: (),
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        // No request timeout.
        Box::pin(std::future::pending())
    }

    fn drop(&self, store: Store<State>, result: wasmtime::Result<()>) {
        if let Err(e) = result {
            eprintln!("tollgate-spin-host: component error: {e:?}");
        }
        drop(store);
    }
}

struct NoExpiry;

impl WorkerExpiration for NoExpiry {
    fn poll(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _state: WorkerStatus,
        _start: Instant,
    ) -> Poll<()> {
        Poll::Pending
    }
}

impl HandlerState for Server {
    type StoreData = State;
    type WorkerExpiration = NoExpiry;
    type WorkerState = OneRequest;

    async fn instantiate(&self) -> wasmtime::Result<Instance<State, NoExpiry, OneRequest>> {
        let mut store = Store::new(&self.engine, State::new(self.app.clone()));
        let proxy = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance {
            store,
            proxy,
            view: ViewFn::P3(<State as WasiHttpView>::http),
            expiration: NoExpiry,
            state: OneRequest,
        })
    }
}

type RespBody = UnsyncBoxBody<Bytes, wasmtime::Error>;

fn text(status: u16, body: &'static str) -> http::Response<RespBody> {
    http::Response::builder()
        .status(status)
        .body(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

/// Spin adds these headers to every incoming request (route `/...`, base `/`).
fn add_spin_headers(
    req: &mut http::Request<Incoming>,
    scheme: &str,
    client: SocketAddr,
    listen: SocketAddr,
) {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| listen.to_string());
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = req.uri().path().to_string();
    let full_url = format!("{scheme}://{host}{path_and_query}");
    if let Ok(uri) = full_url.parse() {
        *req.uri_mut() = uri;
    }
    let h = req.headers_mut();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    put("spin-full-url", &full_url);
    put("spin-path-info", &path);
    put("spin-matched-route", "/...");
    put("spin-raw-component-route", "/...");
    put("spin-component-route", "");
    put("spin-base-path", "/");
    put("spin-client-addr", &client.to_string());
}

async fn serve(
    handler: ProxyHandler<Server>,
    mut req: http::Request<Incoming>,
    scheme: &'static str,
    client: SocketAddr,
    listen: SocketAddr,
) -> Result<http::Response<RespBody>, Infallible> {
    add_spin_headers(&mut req, scheme, client, listen);
    let req = req.map(|body| {
        body.map_err(|e| {
            handler::ErrorCode::from(P3ErrorCode::InternalError(Some(format!(
                "request body: {e}"
            ))))
        })
        .boxed_unsync()
    });
    match handler.handle((), req).await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            eprintln!("tollgate-spin-host: error handling request: {e:?}");
            Ok(text(500, "Internal Server Error\n"))
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut kv = kv::StoreManager::default();
    for (label, spec) in &args.stores {
        kv.add(label, spec)?;
    }
    let mut allowed = outbound::AllowedHosts::default();
    for a in &args.allowed {
        allowed.add(a)?;
    }
    let app = Arc::new(App {
        kv,
        variables: args.variables.clone(),
        allowed_hosts: Arc::new(allowed),
        env: args.env.clone(),
    });

    let mut config = Config::new();
    config.wasm_component_model_async(true);
    let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let t0 = Instant::now();
    let component = Component::from_file(&engine, &args.component)
        .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", args.component))?;
    eprintln!(
        "tollgate-spin-host: compiled {} in {} ms",
        args.component,
        t0.elapsed().as_millis()
    );

    let mut linker = Linker::<State>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    host::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| anyhow::anyhow!("linking {}: {e:?}", args.component))?;
    let pre = wasmtime_wasi_http::p3::bindings::ServicePre::new(instance_pre).map_err(|e| {
        anyhow::anyhow!(
            "{} does not export wasi:http/handler@0.3.0 (spin-sdk 7 / WASIp3 final): {e:?}",
            args.component
        )
    })?;

    let handler = ProxyHandler::new(Server {
        engine: engine.clone(),
        pre: ProxyPre::P3(pre),
        app,
    });

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let accept_plain_http = args.accept_plain_http;

    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}")?;
        out.flush()?;
    }

    loop {
        let (stream, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("tollgate-spin-host: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let tls = match tls {
                Some(acceptor)
                    if !accept_plain_http || starts_with_tls_handshake(&stream).await =>
                {
                    Some(acceptor)
                }
                _ => None,
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let svc = hyper::service::service_fn(move |req| {
                serve(handler.clone(), req, scheme, client, local)
            });
            let result = match tls {
                None => {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                eprintln!("tollgate-spin-host: TLS handshake with {client}: {e}");
                                return;
                            }
                            Err(_) => {
                                eprintln!(
                                    "tollgate-spin-host: TLS handshake with {client} timed out"
                                );
                                return;
                            }
                        };
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                }
            };
            if let Err(e) = result {
                eprintln!("tollgate-spin-host: connection from {client}: {e}");
            }
        });
    }
}

/// A client that does not finish its TLS handshake in this time is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `spin up --tls-cert FILE --tls-key FILE`: PEM certificate chain and private key, served with
/// rustls on the `ring` provider (the one wasmtime-wasi-http's outbound TLS already builds), HTTP/1.1.
fn tls_acceptor(cert: &str, key: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("--tls-cert {cert}: {e}"))?;
    if certs.is_empty() {
        anyhow::bail!("--tls-cert {cert}: no certificate in the file");
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("--tls-key {key}: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Whether the client's first byte is a TLS handshake record (0x16). Waits for it at most
/// [`TLS_HANDSHAKE_TIMEOUT`]; a silent client is treated as plain HTTP (hyper times it out).
async fn starts_with_tls_handshake(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

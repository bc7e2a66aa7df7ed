//! `tollgate-emulator`: the Bedrock runtime emulator as a program.
//!
//! ```text
//! tollgate-emulator --listen 127.0.0.1:0 --region us-east-1 --access-key-id AKID \
//!     --secret-access-key SECRET [--session-token TOKEN] [--bearer-token KEY] [--log] \
//!     [--credentials-rotate-ms N --credentials-lifetime-ms M [--container-token TOKEN]]
//! ```
//!
//! With `--credentials-rotate-ms`, it also serves rotating credentials (a new set every N ms,
//! each valid M ms) as instance metadata and as the container endpoint.
//!
//! Prints exactly one line, `listening on IP:PORT`, to stdout once it accepts connections.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use tollgate_emulator::server::{Config, Emulator};
use tollgate_emulator::sigv4_verify::Credentials;

const USAGE: &str = "usage: tollgate-emulator --access-key-id AKID --secret-access-key SECRET \
[--listen 127.0.0.1:0] [--region us-east-1] [--session-token TOKEN] [--bearer-token BEDROCK_API_KEY] \
[--max-body-bytes N] [--log] [--credentials-rotate-ms N --credentials-lifetime-ms M \
[--container-token TOKEN]]";

struct Args {
    listen: SocketAddr,
    config: Config,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut region = None;
    let mut access_key_id = None;
    let mut secret_access_key = None;
    let mut session_token = None;
    let mut bearer_token = None;
    let mut max_body_bytes = None;
    let mut rotate_ms = None;
    let mut lifetime_ms = None;
    let mut container_token = None;
    let mut log = false;
    let mut args = args;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if name == "--log" {
            log = true;
            continue;
        }
        if name == "--help" || name == "-h" {
            return Err(String::new());
        }
        let slot = match name.as_str() {
            "--listen" => &mut listen,
            "--region" => &mut region,
            "--access-key-id" => &mut access_key_id,
            "--secret-access-key" => &mut secret_access_key,
            "--session-token" => &mut session_token,
            "--bearer-token" => &mut bearer_token,
            "--max-body-bytes" => &mut max_body_bytes,
            "--credentials-rotate-ms" => &mut rotate_ms,
            "--credentials-lifetime-ms" => &mut lifetime_ms,
            "--container-token" => &mut container_token,
            _ => return Err(format!("unknown argument '{arg}'")),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        *slot = Some(value);
    }
    let listen = listen.unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen '{listen}': {e}"))?;
    let credentials = Credentials {
        access_key_id: access_key_id.ok_or("--access-key-id is required")?,
        secret_access_key: secret_access_key.ok_or("--secret-access-key is required")?,
        session_token: session_token.filter(|t| !t.is_empty()),
    };
    let mut config = Config::new(
        region.unwrap_or_else(|| "us-east-1".to_string()),
        credentials,
    );
    config.bearer_token = bearer_token.filter(|t| !t.is_empty());
    config.log = log;
    if let Some(n) = max_body_bytes {
        config.max_body_bytes = n
            .parse()
            .map_err(|e| format!("--max-body-bytes '{n}': {e}"))?;
    }
    let number = |name: &str, v: String| -> Result<u64, String> {
        v.parse().map_err(|e| format!("{name} '{v}': {e}"))
    };
    match (rotate_ms, lifetime_ms) {
        (Some(every), Some(lifetime)) => {
            let every = number("--credentials-rotate-ms", every)?;
            let lifetime = number("--credentials-lifetime-ms", lifetime)?;
            if every == 0 || lifetime < every {
                return Err("credentials must rotate (N > 0) before they expire (M >= N)".into());
            }
            config.rotation = Some(tollgate_emulator::credentials::Rotation::new(
                every, lifetime,
            ));
        }
        (None, None) => {}
        _ => {
            return Err("--credentials-rotate-ms and --credentials-lifetime-ms go together".into())
        }
    }
    config.container_token = container_token.filter(|t| !t.is_empty());
    Ok(Args { listen, config })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            if message.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("tollgate-emulator: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let running = match Emulator::new(args.config).start(args.listen).await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("tollgate-emulator: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "listening on {}", running.addr)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    drop(stdout);
    match running.task.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-emulator: server task failed: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_the_cli() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--region",
            "eu-west-1",
            "--access-key-id",
            "AK",
            "--secret-access-key=S",
            "--session-token",
            "T",
            "--bearer-token",
            "B",
            "--log",
        ])
        .unwrap();
        assert_eq!(a.listen.port(), 0);
        assert_eq!(a.config.region, "eu-west-1");
        assert_eq!(a.config.credentials.access_key_id, "AK");
        assert_eq!(a.config.credentials.secret_access_key, "S");
        assert_eq!(a.config.credentials.session_token.as_deref(), Some("T"));
        assert_eq!(a.config.bearer_token.as_deref(), Some("B"));
        assert!(a.config.log);
        assert!(parse(&["--access-key-id", "AK"]).is_err());
        assert!(parse(&[
            "--access-key-id",
            "AK",
            "--secret-access-key",
            "S",
            "--bogus"
        ])
        .is_err());
        assert!(parse(&[
            "--access-key-id",
            "AK",
            "--secret-access-key",
            "S",
            "--listen",
            "nope"
        ])
        .is_err());
        assert!(parse(&["--access-key-id"]).is_err());
    }
}

//! The HTTP side of the distribution API: one [`Client`] per registry and
//! operation, holding the scheme, the credentials and the current
//! `Authorization` value.
//!
//! Why hand-written calls over `ureq` rather than an OCI client crate: the
//! async clients (oci-client over reqwest/tokio) take layer uploads as
//! in-memory buffers, which breaks the flat-memory rule for push, and
//! bring a second runtime into a synchronous crate; resumed downloads
//! (Range), cross-repository mounts and chunked uploads are a few requests
//! each, written here against the spec.
//!
//! Policy kept here:
//! - Scheme: HTTPS with certificate checks, unless the registry is
//!   insecure: a loopback one ([`is_loopback`], as docker treats them) or
//!   any with `tls_verify` false. An insecure registry gets HTTPS without
//!   certificate checks when it speaks TLS, else plain HTTP (one probe of
//!   `/v2/` decides).
//! - Retries: 429 (after `Retry-After`, at most 30 s), 500/502/503/504 and
//!   connection errors are retried [`ATTEMPTS`] times with doubling
//!   backoff; every other status is an error at once.
//! - Auth: a 401 is answered once per request by (re)authenticating from
//!   its challenge; a second 401 is [`Error::Unauthorized`].
//! - Credentials stay with the registry: the `Authorization` header goes
//!   only to URLs of the registry's own origin (scheme, host and port), so
//!   an upload `Location` elsewhere, or one that downgrades https to http,
//!   gets none (redirects ureq follows never carry it either); a Bearer
//!   realm of another origin gets the Basic credentials only over https.
//! - Deadlines: a request may carry a total one ([`Req::timeout`]), which
//!   covers reading its body too.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::debug;

use super::auth::{self, Challenge, Credentials};
use super::reference::{api_host, is_loopback};
use crate::error::{Error, Result};

/// How many times a request is tried.
pub(crate) const ATTEMPTS: u32 = 5;

/// One registry's connection state.
pub(crate) struct Client {
    agent: ureq::Agent,
    registry: String,
    base: String,
    creds: Option<Credentials>,
    /// `repository:NAME:ACTIONS` scopes asked for with a Bearer token.
    scopes: Vec<String>,
    authorization: Mutex<Option<String>>,
    backoff: Duration,
}

/// A request's method, path (after the base URL, or an absolute URL) and
/// headers; bodies are given to [`Client::send`].
pub(crate) struct Req<'a> {
    pub method: &'a str,
    pub url: String,
    pub headers: Vec<(&'a str, String)>,
    /// The whole request, body included, must end within this.
    pub timeout: Option<Duration>,
}

impl<'a> Req<'a> {
    pub fn new(method: &'a str, url: impl Into<String>) -> Self {
        Req {
            method,
            url: url.into(),
            headers: Vec::new(),
            timeout: None,
        }
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn header(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end: &rustls::pki_types::CertificateDer<'_>,
        _inter: &[rustls::pki_types::CertificateDer<'_>],
        _name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn agent(tls_verify: bool) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .timeout_write(Duration::from_secs(60))
        .max_idle_connections_per_host(8)
        // Redirects ureq follows (blob GETs to a CDN) never carry the
        // Authorization header; said here rather than left to a default.
        .redirect_auth_headers(ureq::RedirectAuthHeaders::Never)
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")));
    if !tls_verify {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth();
        b = b.tls_config(Arc::new(cfg));
    }
    b.build()
}

/// The registry's error document, in one line
/// (`MANIFEST_UNKNOWN: manifest unknown`).
pub(crate) fn error_text(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let errs: Vec<String> = v
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let code = e.get("code").and_then(Value::as_str).unwrap_or("");
                    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
                    format!("{code}: {msg}")
                        .trim_matches([' ', ':'])
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    if errs.is_empty() {
        body.lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect()
    } else {
        errs.join("; ")
    }
}

/// What a failed request turns into.
pub(crate) enum Failure {
    /// The registry answered with this status (and body text).
    Status(u16, String),
    /// No answer (connection refused, reset, timeout, TLS).
    Transport(String),
}

impl Client {
    /// Connects to `registry`: picks the scheme, pings `/v2/` and answers
    /// its challenge with the stored credentials (or `creds`). `scopes`
    /// are `(repository, actions)` pairs for a Bearer token.
    pub fn connect(
        registry: &str,
        scopes: &[(&str, &str)],
        tls_verify: bool,
        creds: Option<Credentials>,
    ) -> Result<Client> {
        let creds = match creds {
            Some(c) => Some(c),
            None => auth::lookup(registry)?,
        };
        let host = api_host(registry);
        // Loopback registries are insecure, as in docker: TLS without
        // certificate checks if they speak it, else plain HTTP.
        let insecure = !tls_verify || is_loopback(registry);
        let agent = agent(!insecure);
        let base = if insecure {
            let https = format!("https://{host}");
            // A loopback server answers a TLS hello at once (or closes);
            // one that waits is not speaking TLS.
            let wait = if is_loopback(registry) { 5 } else { 30 };
            let probe = agent
                .get(&format!("{https}/v2/"))
                .timeout(Duration::from_secs(wait));
            match probe.call() {
                Ok(_) | Err(ureq::Error::Status(..)) => https,
                Err(ureq::Error::Transport(t)) => {
                    debug!(registry, %t, "no TLS; using plain HTTP");
                    format!("http://{host}")
                }
            }
        } else {
            format!("https://{host}")
        };
        let c = Client {
            agent,
            registry: registry.to_string(),
            base,
            creds,
            scopes: scopes
                .iter()
                .map(|(r, a)| format!("repository:{r}:{a}"))
                .collect(),
            authorization: Mutex::new(None),
            backoff: Duration::from_millis(250),
        };
        c.ping()?;
        Ok(c)
    }

    /// The registry's name.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn err(&self, message: impl Into<String>) -> Error {
        Error::Registry {
            registry: self.registry.clone(),
            message: message.into(),
        }
    }

    fn unauthorized(&self, text: &str) -> Error {
        let hint = if self.creds.is_some() {
            "the stored credentials were refused; run 'strata login' again"
        } else {
            "no credentials for this registry; run 'strata login' first"
        };
        Error::Unauthorized {
            registry: self.registry.clone(),
            message: if text.is_empty() {
                hint.to_string()
            } else {
                format!("{text} ({hint})")
            },
        }
    }

    fn ping(&self) -> Result<()> {
        match self.send(Req::new("GET", "/v2/"), None) {
            Ok(_) => Ok(()),
            Err(Failure::Status(401, t)) => Err(self.unauthorized(&error_text(&t))),
            Err(Failure::Status(404, _)) => Err(self.err(format!(
                "{} does not serve the registry API (/v2/ answers 404)",
                self.base
            ))),
            Err(f) => Err(self.failure("ping", f)),
        }
    }

    /// Turns a failure into an error naming `what`.
    pub fn failure(&self, what: &str, f: Failure) -> Error {
        match f {
            Failure::Status(401, t) => self.unauthorized(&error_text(&t)),
            Failure::Status(403, t) => Error::Unauthorized {
                registry: self.registry.clone(),
                message: format!("{what}: access denied ({})", error_text(&t)),
            },
            Failure::Status(code, t) => self.err(format!(
                "{what}: the registry answered {code} ({})",
                error_text(&t)
            )),
            Failure::Transport(t) => self.err(format!("cannot connect ({what}): {t}")),
        }
    }

    fn url(&self, u: &str) -> String {
        if u.starts_with("http://") || u.starts_with("https://") {
            u.to_string()
        } else {
            format!("{}{u}", self.base)
        }
    }

    /// Makes an absolute URL of a `Location` header.
    pub fn resolve_location(&self, loc: &str) -> String {
        self.url(loc)
    }

    /// Answers a 401's challenge: sets the `Authorization` to use.
    fn authenticate(&self, challenge: Option<&str>) -> std::result::Result<(), Failure> {
        let ch = challenge.and_then(auth::parse_challenge);
        let value = match ch {
            Some(Challenge::Basic) | None => match &self.creds {
                Some(c) => c.basic(),
                None => return Err(Failure::Status(401, String::new())),
            },
            Some(Challenge::Bearer { realm, service }) => {
                let mut r = self.agent.get(&realm);
                let realm_origin = origin(&realm);
                let safe = realm_origin.is_some()
                    && (realm_origin == origin(&self.base)
                        || realm_origin.as_ref().is_some_and(|o| o.scheme == "https"));
                if let Some(s) = &service {
                    r = r.query("service", s);
                }
                for s in &self.scopes {
                    r = r.query("scope", s);
                }
                match &self.creds {
                    Some(c) if safe => r = r.set("Authorization", &c.basic()),
                    Some(_) => {
                        debug!(
                            realm,
                            "token realm elsewhere over plain HTTP: asking anonymously"
                        )
                    }
                    None => {}
                }
                let resp = match r.call() {
                    Ok(r) => r,
                    Err(ureq::Error::Status(code, resp)) => {
                        return Err(Failure::Status(
                            code,
                            resp.into_string().unwrap_or_default(),
                        ))
                    }
                    Err(ureq::Error::Transport(t)) => {
                        return Err(Failure::Transport(format!("token from {realm}: {t}")))
                    }
                };
                let v: Value = serde_json::from_str(&read_text(resp.into_reader(), 1 << 20))
                    .map_err(|e| Failure::Transport(format!("token from {realm}: {e}")))?;
                let tok = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        Failure::Transport(format!("token from {realm}: no token in the answer"))
                    })?;
                format!("Bearer {tok}")
            }
        };
        *self.authorization.lock().expect("not poisoned") = Some(value);
        Ok(())
    }

    /// Sends a request, with the retries and authentication described in
    /// the module header. `body` is sent whole (it is resent on retries).
    pub fn send(
        &self,
        req: Req<'_>,
        body: Option<&[u8]>,
    ) -> std::result::Result<ureq::Response, Failure> {
        let url = self.url(&req.url);
        let own = origin(&url).is_some() && origin(&url) == origin(&self.base);
        let until = req.timeout.map(|t| Instant::now() + t);
        let mut authed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut r = self.agent.request(req.method, &url);
            for (k, v) in &req.headers {
                r = r.set(k, v);
            }
            if let Some(until) = until {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Failure::Transport(format!(
                        "no answer within {}s",
                        req.timeout.unwrap_or_default().as_secs()
                    )));
                }
                r = r.timeout(left);
            }
            if own {
                if let Some(a) = self.authorization.lock().expect("not poisoned").clone() {
                    r = r.set("Authorization", &a);
                }
            }
            let res = match body {
                Some(b) => r.send_bytes(b),
                None => r.call(),
            };
            let wait = match res {
                Ok(resp) => return Ok(resp),
                // Only the registry's own challenge is answered, not one
                // of a host a redirect led to.
                Err(ureq::Error::Status(401, resp))
                    if !authed && own && origin(resp.get_url()) == origin(&self.base) =>
                {
                    authed = true;
                    attempt -= 1;
                    let ch = resp.header("WWW-Authenticate").map(str::to_string);
                    self.authenticate(ch.as_deref())?;
                    continue;
                }
                Err(ureq::Error::Status(429, resp)) if attempt < ATTEMPTS => {
                    let secs = resp
                        .header("Retry-After")
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    match secs {
                        Some(s) => Duration::from_secs(s.min(30)),
                        None => self.backoff * 2u32.pow(attempt),
                    }
                }
                Err(ureq::Error::Status(code @ (500 | 502 | 503 | 504), _))
                    if attempt < ATTEMPTS =>
                {
                    debug!(code, url, attempt, "retrying");
                    self.backoff * 2u32.pow(attempt - 1)
                }
                Err(ureq::Error::Status(code, resp)) => {
                    return Err(Failure::Status(
                        code,
                        read_text(resp.into_reader(), 64 << 10),
                    ))
                }
                Err(ureq::Error::Transport(t)) if attempt < ATTEMPTS && is_transient(&t) => {
                    debug!(%t, url, attempt, "retrying");
                    self.backoff * 2u32.pow(attempt - 1)
                }
                Err(ureq::Error::Transport(t)) => return Err(Failure::Transport(t.to_string())),
            };
            std::thread::sleep(wait);
        }
    }
}

/// Where a URL points: its scheme, host and port, compared to decide
/// whether credentials may go there.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

/// The origin of an absolute `http` or `https` URL; `None` for anything
/// else (which then never gets credentials).
pub(crate) fn origin(url: &str) -> Option<Origin> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some("") | None => default,
        Some(p) => p.parse().ok()?,
    };
    if host.is_empty() {
        return None;
    }
    Some(Origin {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Whether a transport error may go away on retry (not a refused
/// connection or a TLS failure, which are answered at once).
fn is_transient(t: &ureq::Transport) -> bool {
    !matches!(
        t.kind(),
        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns | ureq::ErrorKind::InvalidUrl
    ) && !t.to_string().contains("InvalidCertificate")
        && !t.to_string().contains("invalid peer certificate")
}

/// Reads at most `limit` bytes of text.
pub(crate) fn read_text(r: impl Read, limit: u64) -> String {
    let mut s = String::new();
    let _ = r.take(limit).read_to_string(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let o = |u| origin(u).unwrap();
        assert_eq!(o("https://Reg.example/v2/"), o("https://reg.example:443/x"));
        assert_eq!(
            o("http://127.0.0.1:5000"),
            o("http://127.0.0.1:5000/v2/a?b")
        );
        assert_ne!(o("http://127.0.0.1:5000/"), o("http://127.0.0.1:5001/"));
        assert_ne!(o("https://reg.example/"), o("http://reg.example/"));
        assert_ne!(o("https://reg.example/"), o("https://cdn.example/"));
        assert_eq!(o("https://u:p@[::1]:8443/x"), o("https://[::1]:8443"));
        assert_ne!(
            o("https://reg.example@evil.example/"),
            o("https://reg.example/")
        );
        assert!(origin("/v2/x").is_none());
        assert!(origin("ftp://reg.example/").is_none());
    }
}

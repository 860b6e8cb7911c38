//! The one HTTP client of a run: HTTP/1.1 over plain TCP with pooled keep-alive connections
//! (one per request in flight, as `vllm bench serve` uses them). TLS is left out on purpose:
//! a benchmark runs next to the server, and a TLS stack would be most of this crate's build.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::LoadgenError;

/// Why no response came: the connection failed or the exchange broke before the headers.
#[derive(Debug)]
pub struct SendError {
    pub connect: bool,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port[/prefix]` without a trailing slash.
    base: String,
    auth: Option<HeaderValue>,
}

impl HttpClient {
    /// A client for `base_url`; connection attempts give up after `connect_timeout`.
    pub fn new(
        base_url: &str,
        api_key: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Self, LoadgenError> {
        let bad = |reason: &str| LoadgenError::BaseUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = base_url
            .parse()
            .map_err(|e| bad(&format!("not a URL ({e})")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported (plain HTTP only); benchmark next to the server",
                ))
            }
            _ => return Err(bad("expected http://HOST:PORT")),
        }
        if uri.authority().is_none() {
            return Err(bad("expected http://HOST:PORT"));
        }
        let auth = api_key
            .map(|k| HeaderValue::from_str(&format!("Bearer {k}")))
            .transpose()
            .map_err(|_| LoadgenError::Config("the API key is not a valid header value".into()))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            base: base_url.trim_end_matches('/').to_string(),
            auth,
        })
    }

    /// The URI of `path` (which starts with `/`) under the base URL.
    pub fn uri(&self, path: &str) -> Result<Uri, LoadgenError> {
        let full = format!("{}{}", self.base, path);
        full.parse().map_err(|e| LoadgenError::BaseUrl {
            url: full.clone(),
            reason: format!("not a URL ({e})"),
        })
    }

    /// POSTs a JSON body; the response's body is left to the caller to stream.
    pub async fn post_json(&self, uri: &Uri, body: Bytes) -> Result<Response<Incoming>, SendError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        self.send(req.body(Full::new(body))).await
    }

    pub async fn get(&self, uri: &Uri) -> Result<Response<Incoming>, SendError> {
        let mut req = Request::builder().method(Method::GET).uri(uri.clone());
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        self.send(req.body(Full::new(Bytes::new()))).await
    }

    async fn send(
        &self,
        req: Result<Request<Full<Bytes>>, hyper::http::Error>,
    ) -> Result<Response<Incoming>, SendError> {
        let req = req.map_err(|e| SendError {
            connect: false,
            message: format!("building the request: {e}"),
        })?;
        self.client.request(req).await.map_err(|e| SendError {
            connect: e.is_connect(),
            message: error_chain(&e),
        })
    }
}

/// A whole body, refused beyond `limit` bytes (a server cannot make the client hoard memory).
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, String> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| error_chain(&*e))
}

/// An error and its sources on one line: hyper's top-level messages alone ("client error
/// (Connect)") do not say what went wrong.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let c = HttpClient::new("http://127.0.0.1:8000/", None, Duration::from_secs(1)).unwrap();
        assert_eq!(
            c.uri("/v1/completions").unwrap().to_string(),
            "http://127.0.0.1:8000/v1/completions"
        );
        let prefixed = HttpClient::new("http://h:1/api", None, Duration::from_secs(1)).unwrap();
        assert_eq!(prefixed.uri("/v1/models").unwrap().path(), "/api/v1/models");
        for bad in ["https://h:1", "127.0.0.1:8000", "not a url", "/v1"] {
            assert!(
                HttpClient::new(bad, None, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }
}

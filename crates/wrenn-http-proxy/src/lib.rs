//! One reverse-proxy hop, shared by the control plane (browser → owning
//! agent) and the host agent (agent → a port inside a sandbox).
//!
//! [`forward`] sends a request on to an upstream over HTTP/1.1 and hands
//! back its response: bodies stream both ways (nothing is buffered), hop-by-hop
//! headers are dropped, and an `Upgrade` (WebSocket, or anything else that
//! answers `101 Switching Protocols`) becomes a byte pipe between the two
//! connections for as long as either side keeps it open. Server-sent events
//! need nothing special: the response body is passed on chunk by chunk.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A pooled HTTP/1.1 client for upstreams (keep-alive, `TCP_NODELAY`),
/// over plain TCP or, with [`FallbackConnector`], TCP with a second way in.
pub type Client<C = HttpConnector> = hyper_util::client::legacy::Client<C, Body>;

fn http_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    connector
}

fn pooled<C: Connect + Clone>(connector: C) -> Client<C> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build(connector)
}

/// A new pooled client.
pub fn client() -> Client {
    pooled(http_connector())
}

/// A new pooled client that, when an upstream's address refuses the
/// connection, asks `fallback` for another connection to the same
/// upstream (the agent: the sandbox's own loopback, for servers bound to
/// 127.0.0.1 inside it). Connections made either way are pooled alike.
pub fn client_with_fallback(fallback: Fallback) -> Client<FallbackConnector> {
    pooled(FallbackConnector {
        http: http_connector(),
        fallback,
    })
}

/// A second way to reach an upstream whose address refused: `None` when
/// there is none (the refusal stands), else the connection or why not.
pub type Fallback = Arc<
    dyn Fn(
            SocketAddr,
        )
            -> Pin<Box<dyn Future<Output = Option<std::io::Result<tokio::net::TcpStream>>> + Send>>
        + Send
        + Sync,
>;

/// TCP connections, with a [`Fallback`] for refused ones.
#[derive(Clone)]
pub struct FallbackConnector {
    http: HttpConnector,
    fallback: Fallback,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether `e`, or what caused it, is a refused connection.
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

impl tower_service::Service<Uri> for FallbackConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let direct = self.http.call(uri.clone());
        let fallback = self.fallback.clone();
        Box::pin(async move {
            let e = match direct.await {
                Ok(io) => return Ok(io),
                Err(e) => e,
            };
            let addr = uri
                .host()
                .and_then(|h| h.trim_matches(['[', ']']).parse().ok())
                .zip(uri.port_u16())
                .map(|(ip, port)| SocketAddr::new(ip, port));
            match addr {
                Some(addr) if refused(&e) => match fallback(addr).await {
                    Some(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        Ok(TokioIo::new(stream))
                    }
                    // The first refusal says it best.
                    Some(Err(_)) | None => Err(e.into()),
                },
                _ => Err(e.into()),
            }
        })
    }
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Nothing accepted the connection (refused, unreachable, timed out).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke before a response arrived.
    #[error("the upstream failed: {0}")]
    Upstream(String),
}

/// Whether a request asks to switch protocols (`Connection: upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && headers.contains_key(header::UPGRADE)
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Drops hop-by-hop headers (and those `Connection` names); keeps
/// `Connection: upgrade` and `Upgrade` when `upgrading`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|h| *h != header::UPGRADE)
        .collect();
    for h in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(h);
    }
    if upgrading {
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Sends `req` to `target` (an absolute `http://` URI) and returns the
/// upstream's response, streaming. The request's `Host` header is kept, so
/// the upstream sees the name the client used.
pub async fn forward<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C>,
    mut req: Request<Body>,
    target: Uri,
) -> Result<Response<Body>, ForwardError> {
    let upgrading = is_upgrade(req.headers());
    let downstream = upgrading.then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.headers_mut(), upgrading);
    *req.uri_mut() = target;
    *req.version_mut() = Version::HTTP_11;
    let mut resp = client.request(req).await.map_err(|e| {
        if e.is_connect() {
            // The innermost cause says what happened ("Connection refused").
            let mut cause: &dyn std::error::Error = &e;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            ForwardError::Connect(cause.to_string())
        } else {
            ForwardError::Upstream(e.to_string())
        }
    })?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(downstream) = downstream else {
            return Err(ForwardError::Upstream(
                "101 Switching Protocols to a request that asked for no upgrade".into(),
            ));
        };
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
                Err(e) => tracing::debug!("upgrade failed: {e}"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    Ok(resp.map(Body::new))
}

/// A plain-text response (for proxy errors the upstream never saw).
pub fn text(status: StatusCode, json: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json.to_string()))
        .expect("static response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::routing::{any, get};
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve(app: axum::Router) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    }

    /// An upstream with an echo route, a streamed route and a WebSocket echo,
    /// behind a proxy app that forwards every request to it.
    async fn proxied() -> std::net::SocketAddr {
        let upstream = serve(
            axum::Router::new()
                .route(
                    "/echo",
                    any(|req: Request<Body>| async move {
                        let host = req.headers()[header::HOST].to_str().unwrap().to_string();
                        let hop = req.headers().contains_key("keep-alive");
                        let body = axum::body::to_bytes(req.into_body(), usize::MAX)
                            .await
                            .unwrap();
                        format!("host={host} hop={hop} len={}", body.len())
                    }),
                )
                .route(
                    "/ws",
                    get(|ws: WebSocketUpgrade| async move {
                        ws.on_upgrade(|mut s| async move {
                            while let Some(Ok(Message::Text(t))) = s.next().await {
                                let _ = s.send(Message::Text(format!("echo {t}").into())).await;
                            }
                        })
                    }),
                ),
        )
        .await;
        let client = client();
        serve(axum::Router::new().fallback(move |req: Request<Body>| {
            let client = client.clone();
            async move {
                let target: Uri = format!("http://{upstream}{}", req.uri()).parse().unwrap();
                match forward(&client, req, target).await {
                    Ok(r) => r,
                    Err(e) => text(
                        StatusCode::BAD_GATEWAY,
                        serde_json::json!({"message": e.to_string()}),
                    ),
                }
            }
        }))
        .await
    }

    async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> (tokio::net::TcpStream, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        (s, String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[tokio::test]
    async fn bodies_stream_through_and_hop_headers_stop() {
        let addr = proxied().await;
        let body = vec![b'x'; 3 << 20];
        let mut req = format!(
            "POST /echo HTTP/1.1\r\nHost: 8000-sb-abc.example\r\nKeep-Alive: timeout=5\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let (mut s, mut head) = raw(addr, &req).await;
        s.read_to_string(&mut head).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.ends_with("host=8000-sb-abc.example hop=false len=3145728"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn websocket_upgrades_become_a_pipe() {
        let addr = proxied().await;
        let (mut s, head) = raw(
            addr,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        // A masked text frame "hi".
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 2];
        frame.extend_from_slice(&mask);
        frame.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).await.unwrap();
        let mut got = [0u8; 9];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..2], &[0x81, 7]);
        assert_eq!(&got[2..], b"echo hi");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let req = Request::get("/").body(Body::empty()).unwrap();
        let e = forward(
            &client(),
            req,
            format!("http://127.0.0.1:{port}/").parse().unwrap(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ForwardError::Connect(_)), "{e:?}");
        assert!(e.to_string().contains("refused"), "{e}");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }
}

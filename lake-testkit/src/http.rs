//! A minimal HTTP/1.1 client for talking to the S3 emulator directly.
//!
//! The harness only needs a handful of unsigned requests (is the server up, create
//! a bucket, list it), and moto does not check signatures. A few lines over a
//! `TcpStream` avoid pulling an HTTP client into every test binary and keep these
//! raw checks independent of the `object_store` code under test.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status code and body (headers are dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status code, such as 200.
    pub status: u16,
    /// Response body decoded as UTF-8 (lossily).
    pub body: String,
}

impl HttpResponse {
    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends `method path` with an empty body to `127.0.0.1:port` and reads the whole
/// response (`Connection: close`).
pub(crate) async fn request(
    port: u16,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse> {
    tokio::time::timeout(timeout, request_inner(port, method, path))
        .await
        .with_context(|| {
            format!("{method} {path} on 127.0.0.1:{port} timed out after {timeout:?}")
        })?
}

async fn request_inner(port: u16, method: &str, path: &str) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("sending the request")?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .context("reading the response")?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(at) => (&raw[..at], &raw[at + 4..]),
        None => (raw, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("not an HTTP response: {status_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status_line:?}");
    }
    let status = code
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Decodes a chunked body (best effort; the harness only reads small XML bodies).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size_field = String::from_utf8_lossy(&body[..eol]);
        let Ok(size) =
            usize::from_str_radix(size_field.split(';').next().unwrap_or_default().trim(), 16)
        else {
            break;
        };
        let Some(chunk) = body.get(eol + 2..eol + 2 + size) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.extend_from_slice(chunk);
        body = body.get(eol + 2 + size + 2..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!(
            plain,
            HttpResponse {
                status: 200,
                body: "ok".into()
            }
        );
        let chunked = parse(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(chunked.status, 404);
        assert_eq!(chunked.body, "abcde");
        assert!(parse(b"garbage").is_err());
    }
}

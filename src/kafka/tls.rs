//! Why a TLS connection to the brokers failed, in words that name the setting to fix.
//!
//! librdkafka reports an untrusted broker certificate as `BrokerTransportFailure` to the
//! admin client (the handshake's reason goes to a log queue nobody polls there), which sends
//! an operator looking at the network. When `security.protocol` is `SSL` or `SASL_SSL` and the
//! brokers cannot be reached, [`explain`] makes one TLS handshake of its own with the first
//! bootstrap server, trusting what librdkafka trusts (`ssl.ca.location`, or the system's
//! CAs), and turns a failed certificate check into an error naming `ssl.ca.location`.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslVerifyMode};

use crate::config::KafkaConfig;
use crate::error::AdminError;

/// Bound on the diagnosing connection and handshake: a start-up error must not hang.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `err` (a failed first contact with the brokers), or a [`AdminError::Tls`] naming the
/// setting when a handshake of our own shows the broker's certificate is not trusted.
pub async fn explain(k: &KafkaConfig, err: AdminError) -> AdminError {
    let k = k.clone();
    match tokio::task::spawn_blocking(move || probe(&k)).await {
        Ok(Some(reason)) => AdminError::Tls(reason),
        _ => err,
    }
}

/// The reason a TLS handshake with the first bootstrap server fails, if TLS is configured and
/// the handshake fails on the certificate; `None` otherwise (no TLS, server unreachable,
/// handshake fine: then the TLS settings are not the problem).
pub fn probe(k: &KafkaConfig) -> Option<String> {
    let protocol = k.settings.get("security.protocol").map(|p| p.to_ascii_lowercase())?;
    if protocol != "ssl" && protocol != "sasl_ssl" {
        return None;
    }
    let server = k.bootstrap.split(',').next()?.trim();
    let server = server.strip_prefix("ssl://").or_else(|| server.strip_prefix("sasl_ssl://")).unwrap_or(server);
    let host = server.rsplit_once(':').map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))?;
    let ca = k.settings.get("ssl.ca.location");
    let mut builder = SslConnector::builder(SslMethod::tls_client()).ok()?;
    match ca {
        Some(path) => {
            if let Err(e) = builder.set_ca_file(path) {
                return Some(format!("kafka.settings.\"ssl.ca.location\" = {path:?} is not a readable PEM file of CA certificates: {e}"));
            }
        }
        _ => {
            let _ = builder.set_default_verify_paths();
        }
    }
    builder.set_verify(SslVerifyMode::PEER);
    let connector = builder.build();
    let addr = server.to_socket_addrs().ok()?.next()?;
    let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let mut config = connector.configure().ok()?;
    // librdkafka checks the host name only when `ssl.endpoint.identification.algorithm` is
    // `https` (its default); mirror that so the probe blames only what librdkafka checks.
    let check_host = k.settings.get("ssl.endpoint.identification.algorithm").is_none_or(|a| a.eq_ignore_ascii_case("https"));
    config.set_verify_hostname(check_host);
    match config.connect(host, stream) {
        Ok(_) => None,
        Err(HandshakeError::Failure(mid)) => {
            let verify = mid.ssl().verify_result();
            if verify == openssl::x509::X509VerifyResult::OK {
                return None;
            }
            let trusted = match ca {
                Some(path) => format!("the CA file kafka.settings.\"ssl.ca.location\" = {path:?}"),
                None => "the system's CA certificates (set kafka.settings.\"ssl.ca.location\" to the broker's CA file)".to_string(),
            };
            Some(format!(
                "the TLS handshake with {server} failed: certificate verify failed ({}); the broker's certificate is not trusted by {trusted}",
                verify.error_string()
            ))
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tls_configured_means_nothing_to_explain() {
        assert_eq!(probe(&KafkaConfig::default()), None);
    }

    #[test]
    fn an_unreadable_ca_file_is_named() {
        let mut k = KafkaConfig::default();
        k.settings.insert("security.protocol".into(), "SSL".into());
        k.settings.insert("ssl.ca.location".into(), "/nonexistent/ca.pem".into());
        let reason = probe(&k).unwrap_or_default();
        assert!(reason.contains("ssl.ca.location") && reason.contains("/nonexistent/ca.pem"), "{reason}");
    }
}

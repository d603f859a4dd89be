use std::sync::Arc;

use super::*;

/// The first flight of a real rustls client: its ClientHello, as the proxy would peek it.
fn client_hello_bytes(sni: Option<&str>) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    let name =
        rustls_pki_types::ServerName::try_from(sni.unwrap_or("unused.example").to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn a_client_hello_gives_its_sni_and_no_prefix_of_it_decides_early() {
    let hello = client_hello_bytes(Some("intake.example.test"));
    assert_eq!(
        sniff(&hello, false),
        Some(Sniffed::Tls {
            sni: Some("intake.example.test".into())
        })
    );
    for cut in 1..hello.len() {
        assert_eq!(sniff(&hello[..cut], false), None, "prefix of {cut} bytes");
        // A client that closes mid-hello names nothing.
        assert_eq!(sniff(&hello[..cut], true), Some(Sniffed::Other));
    }
    assert_eq!(sniff(&[], false), None);
    assert_eq!(sniff(&[], true), Some(Sniffed::Other));
}

#[test]
fn a_client_hello_without_sni_names_nothing() {
    let hello = client_hello_bytes(None);
    assert_eq!(sniff(&hello, false), Some(Sniffed::Tls { sni: None }));
}

#[test]
fn garbage_after_a_handshake_byte_is_other() {
    let mut hello = client_hello_bytes(Some("intake.example.test"));
    // Corrupt the handshake type (ClientHello = 1) inside the record.
    hello[5] = 0x02;
    assert_eq!(sniff(&hello, false), Some(Sniffed::Other));
    let garbage = [0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00];
    assert_eq!(sniff(&garbage, false), Some(Sniffed::Other));
    assert_eq!(sniff(b"\x00\x01binary", false), Some(Sniffed::Other));
}

#[test]
fn an_http_head_gives_its_host() {
    let head = b"POST /api/v2/series HTTP/1.1\r\nHost: intake.example.test:80\r\nContent-Length: 2\r\n\r\n{}";
    assert_eq!(
        sniff(head, false),
        Some(Sniffed::Http {
            host: Some("intake.example.test:80".into())
        })
    );
    let end = head.len() - 2;
    for cut in 1..end - 1 {
        assert_eq!(sniff(&head[..cut], false), None, "prefix of {cut} bytes");
    }
    let two = b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n";
    assert_eq!(sniff(two, false), Some(Sniffed::Http { host: None }));
    let none = b"GET / HTTP/1.0\r\n\r\n";
    assert_eq!(sniff(none, false), Some(Sniffed::Http { host: None }));
}

#[test]
fn other_protocols_are_other() {
    assert_eq!(
        sniff(b"SSH-2.0-OpenSSH_9.2\r\n", false),
        Some(Sniffed::Other)
    );
    assert_eq!(
        sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false),
        Some(Sniffed::Other)
    );
    // A head that never ends is cut at the buffer's size.
    let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
    long.resize(MAX_SNIFF, b'a');
    assert_eq!(sniff(&long, false), Some(Sniffed::Other));
}

#[test]
fn host_values_lose_their_port() {
    for (value, host) in [
        ("intake.example.test", "intake.example.test"),
        ("intake.example.test:8080", "intake.example.test"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("11.0.0.10:80", "11.0.0.10"),
    ] {
        assert_eq!(host_without_port(value), host, "{value}");
    }
}

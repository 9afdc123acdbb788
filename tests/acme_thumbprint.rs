//! `sniroute acme-thumbprint`: account keys made by the openssl CLI, in each
//! form ACME clients store them, against a thumbprint computed here from what
//! openssl says the public key is (the canonical JWK built by hand, hashed and
//! encoded by openssl).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::run_cli;

/// Runs openssl with `stdin`; panics with its stderr on failure.
fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl command");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn openssl_text(args: &[&str]) -> String {
    String::from_utf8(openssl(args, b"")).unwrap()
}

/// Base64url without padding, by openssl.
fn b64url(bytes: &[u8]) -> String {
    let standard = openssl_text_in(&["base64", "-A"], bytes);
    standard
        .trim()
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn openssl_text_in(args: &[&str], stdin: &[u8]) -> String {
    String::from_utf8(openssl(args, stdin)).unwrap()
}

fn unhex(hex: &str) -> Vec<u8> {
    let hex: String = hex.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    };
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn strip_zeros(bytes: Vec<u8>) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap();
    bytes[start..].to_vec()
}

/// RFC 7638: SHA-256 of the canonical JWK, base64url; hashed by openssl.
fn expected(canonical_jwk: &str) -> String {
    b64url(&openssl(
        &["dgst", "-sha256", "-binary"],
        canonical_jwk.as_bytes(),
    ))
}

/// The RSA key's n and e (base64url) as openssl prints them.
fn rsa_n_e(key: &Path) -> (String, String) {
    let key = key.to_str().unwrap();
    let modulus = openssl_text(&["rsa", "-in", key, "-noout", "-modulus"]);
    let n = strip_zeros(unhex(modulus.trim().strip_prefix("Modulus=").unwrap()));
    let text = openssl_text(&["rsa", "-in", key, "-noout", "-text"]);
    // "publicExponent: 65537 (0x10001)"
    let e_hex = text
        .lines()
        .find_map(|l| l.strip_prefix("publicExponent: "))
        .and_then(|l| l.split("(0x").nth(1))
        .unwrap()
        .trim_end_matches(')');
    (b64url(&n), b64url(&strip_zeros(unhex(e_hex))))
}

fn rsa_expected(key: &Path) -> String {
    let (n, e) = rsa_n_e(key);
    expected(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#))
}

/// The EC key's x and y (base64url) from the "pub:" block of `openssl ec -text`.
fn ec_x_y(key: &Path) -> (String, String) {
    let text = openssl_text(&["ec", "-in", key.to_str().unwrap(), "-noout", "-text"]);
    let hex: String = text
        .lines()
        .skip_while(|l| !l.starts_with("pub:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect();
    let point = unhex(&hex);
    assert_eq!(point[0], 4, "uncompressed point: {text}");
    let len = (point.len() - 1) / 2;
    (b64url(&point[1..=len]), b64url(&point[1 + len..]))
}

fn ec_expected(key: &Path, crv: &str) -> String {
    let (x, y) = ec_x_y(key);
    expected(&format!(
        r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#
    ))
}

fn generate(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    // Right after the command: genrsa wants the key size last.
    let mut all = vec![args[0], "-out", path.to_str().unwrap()];
    all.extend(&args[1..]);
    openssl(&all, b"");
    path
}

fn thumbprint(args: &[&str]) -> String {
    let mut all = vec!["acme-thumbprint"];
    all.extend(args);
    let (code, out, err) = run_cli(&all);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    assert!(out.ends_with('\n') && out.lines().count() == 1, "{out:?}");
    let thumbprint = out.trim_end().to_string();
    assert_eq!(thumbprint.len(), 43, "{thumbprint}");
    thumbprint
}

/// Base64 (standard, padded, as Go writes []byte) of a DER key openssl writes.
fn der_base64(key: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["-in", key.to_str().unwrap(), "-outform", "DER"]);
    let der = openssl(&all, b"");
    openssl_text_in(&["base64", "-A"], &der).trim().to_string()
}

#[test]
fn rsa_pkcs1_and_pkcs8_pem_keys_a_jwk_and_an_acme_json_agree_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let pkcs1 = generate(dir.path(), "pkcs1.pem", &["genrsa", "-traditional", "2048"]);
    assert!(std::fs::read_to_string(&pkcs1)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let want = rsa_expected(&pkcs1);
    assert_eq!(thumbprint(&[pkcs1.to_str().unwrap()]), want);

    // The same key as a JWK with private members, as certbot stores it.
    let (n, e) = rsa_n_e(&pkcs1);
    let jwk = dir.path().join("private_key.json");
    std::fs::write(
        &jwk,
        format!("{{\"n\": \"{n}\", \"e\": \"{e}\", \"d\": \"AQ\", \"kty\": \"RSA\"}}\n"),
    )
    .unwrap();
    assert_eq!(thumbprint(&[jwk.to_str().unwrap()]), want);

    // And in Traefik's acme.json, behind a resolver that sorts after the next.
    let ec = generate(
        dir.path(),
        "ec.pem",
        &["ecparam", "-genkey", "-name", "prime256v1", "-noout"],
    );
    let acme_json = dir.path().join("acme.json");
    std::fs::write(
        &acme_json,
        format!(
            r#"{{
  "zeta": {{"Account": {{"Email": "a@example.com", "PrivateKey": "{}", "KeyType": "4096"}}, "Certificates": null}},
  "alpha": {{"Account": {{"Email": "a@example.com", "PrivateKey": "{}", "KeyType": "EC256"}}, "Certificates": null}}
}}"#,
            der_base64(&pkcs1, &["rsa", "-traditional"]),
            der_base64(&ec, &["ec"]),
        ),
    )
    .unwrap();
    let acme_json = acme_json.to_str().unwrap();
    assert_eq!(thumbprint(&[acme_json]), want);
    assert_eq!(thumbprint(&[acme_json, "--resolver", "zeta"]), want);
    assert_eq!(
        thumbprint(&[acme_json, "--resolver", "alpha"]),
        ec_expected(&ec, "P-256")
    );

    let pkcs8 = generate(
        dir.path(),
        "pkcs8.pem",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
    );
    assert!(std::fs::read_to_string(&pkcs8)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    let want8 = rsa_expected(&pkcs8);
    assert_ne!(want8, want);
    assert_eq!(thumbprint(&[pkcs8.to_str().unwrap()]), want8);
}

#[test]
fn ec_sec1_p256_and_pkcs8_p384_pem_keys_agree_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let sec1 = generate(
        dir.path(),
        "sec1.pem",
        &["ecparam", "-genkey", "-name", "prime256v1", "-noout"],
    );
    assert!(std::fs::read_to_string(&sec1)
        .unwrap()
        .starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert_eq!(
        thumbprint(&[sec1.to_str().unwrap()]),
        ec_expected(&sec1, "P-256")
    );

    let pkcs8 = generate(
        dir.path(),
        "p384.pem",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ],
    );
    assert!(std::fs::read_to_string(&pkcs8)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    let want = ec_expected(&pkcs8, "P-384");
    assert_eq!(thumbprint(&[pkcs8.to_str().unwrap()]), want);

    // The same P-384 key as a JWK gives the same thumbprint.
    let (x, y) = ec_x_y(&pkcs8);
    let jwk = dir.path().join("key.jwk");
    std::fs::write(
        &jwk,
        format!(r#"{{"kty":"EC","crv":"P-384","x":"{x}","y":"{y}","d":"AQ"}}"#),
    )
    .unwrap();
    assert_eq!(thumbprint(&[jwk.to_str().unwrap()]), want);
}

fn assert_fails(args: &[&str], words: &[&str]) {
    let mut all = vec!["acme-thumbprint"];
    all.extend(args);
    let (code, out, err) = run_cli(&all);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "");
    assert!(err.starts_with("sniroute: error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for word in words {
        assert!(err.contains(word), "{word:?} not in {err}");
    }
}

#[test]
fn garbage_ed25519_unknown_resolver_and_missing_files_exit_1_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"\x00\x01 not a key").unwrap();
    let garbage = garbage.to_str().unwrap();
    assert_fails(
        &[garbage],
        &[
            garbage,
            "not an ACME account key",
            "expected an ACME account key: a JWK",
        ],
    );

    let ed = generate(dir.path(), "ed.pem", &["genpkey", "-algorithm", "ed25519"]);
    let ed = ed.to_str().unwrap();
    assert_fails(
        &[ed],
        &[
            ed,
            "unsupported key type: Ed25519",
            "RSA, or EC on P-256 or P-384",
        ],
    );

    // SEC1 may leave the public key out; it is not computed from the private one.
    let ec = generate(
        dir.path(),
        "ec.pem",
        &["ecparam", "-genkey", "-name", "prime256v1", "-noout"],
    );
    let bare = dir.path().join("bare.pem");
    openssl(
        &[
            "ec",
            "-in",
            ec.to_str().unwrap(),
            "-no_public",
            "-out",
            bare.to_str().unwrap(),
        ],
        b"",
    );
    let bare = bare.to_str().unwrap();
    assert_fails(
        &[bare],
        &[
            bare,
            "does not include its public key",
            "openssl ec -in FILE",
        ],
    );

    let cert_path = common::cert_pem_file(dir.path());
    let cert_path = cert_path.to_str().unwrap();
    assert_fails(
        &[cert_path],
        &[cert_path, "a certificate, not a private key"],
    );

    let acme_json = dir.path().join("acme.json");
    std::fs::write(
        &acme_json,
        r#"{"le": {"Account": null}, "staging": {"Account": null}}"#,
    )
    .unwrap();
    let acme_json = acme_json.to_str().unwrap();
    assert_fails(
        &[acme_json, "--resolver", "prod"],
        &[
            acme_json,
            "no resolver \"prod\" in the acme.json; its resolvers: le, staging",
        ],
    );
    assert_fails(&[acme_json], &["resolver \"le\" has no account key"]);

    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    assert_fails(&[missing], &["cannot read the account key", missing]);
}

//! AWS Signature Version 4 for the one request shape the signed client
//! sends: a `POST` of JSON to a path without a query, with `accept` and
//! `content-type` signed. The day's signing key (four HMACs of the secret)
//! is derived once a day per credentials instead of once a request, and
//! nothing is parsed or allocated that this shape does not need: `aws-sigv4`
//! did the same work generically at about 9% of the gateway's CPU a request
//! (BENCHMARKS.md, issue 31). A test signs the same requests with
//! `aws-sigv4` and expects the same headers, byte for byte.

use std::fmt::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use sha2::{Digest, Sha256};

/// The headers a signed request carries besides its own.
#[derive(Debug, PartialEq, Eq)]
pub struct Signature {
    /// `x-amz-date`: `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    /// `authorization`.
    pub authorization: String,
    /// `x-amz-security-token`, with temporary credentials.
    pub security_token: Option<String>,
}

/// Signs requests for one region and service.
pub struct Signer {
    region: String,
    service: &'static str,
    day_key: Mutex<Option<DayKey>>,
}

/// A signing key: valid for one UTC day, one secret, one region and service.
struct DayKey {
    date: [u8; 8],
    secret: String,
    key: [u8; 32],
}

/// Without the secret or the key it holds.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(region: &str, service: &'static str) -> Self {
        Self {
            region: region.to_owned(),
            service,
            day_key: Mutex::new(None),
        }
    }

    /// Signs `POST {path}` to `host` (the URL's authority, with its port if
    /// it has one) with `body`, at `now`. `path` is already percent-encoded
    /// as it goes on the wire.
    pub fn sign(
        &self,
        credentials: &Credentials,
        now: SystemTime,
        host: &str,
        path: &str,
        body: &[u8],
    ) -> Signature {
        let amz_date = amz_date(now);
        let date = &amz_date[..8];
        let token = credentials.session_token();

        let mut canonical = String::with_capacity(320 + path.len() + host.len());
        canonical.push_str("POST\n");
        // The URI is encoded twice, as for every service but S3: the path's
        // own escapes (`%3A`) are escaped again (`%253A`).
        canonical.push_str(&path.replace('%', "%25"));
        canonical.push_str("\n\naccept:application/json\ncontent-type:application/json\nhost:");
        canonical.push_str(host);
        canonical.push_str("\nx-amz-date:");
        canonical.push_str(&amz_date);
        if let Some(token) = token {
            canonical.push_str("\nx-amz-security-token:");
            canonical.push_str(token.trim());
        }
        let signed_headers = if token.is_some() {
            "accept;content-type;host;x-amz-date;x-amz-security-token"
        } else {
            "accept;content-type;host;x-amz-date"
        };
        canonical.push_str("\n\n");
        canonical.push_str(signed_headers);
        canonical.push('\n');
        push_hex(&mut canonical, &Sha256::digest(body));

        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let mut to_sign = String::with_capacity(128 + scope.len());
        to_sign.push_str("AWS4-HMAC-SHA256\n");
        to_sign.push_str(&amz_date);
        to_sign.push('\n');
        to_sign.push_str(&scope);
        to_sign.push('\n');
        push_hex(&mut to_sign, &Sha256::digest(canonical.as_bytes()));

        let key = self.key_for(credentials.secret_access_key(), date);
        let mut authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature=",
            credentials.access_key_id()
        );
        push_hex(&mut authorization, &hmac(&key, to_sign.as_bytes()));
        Signature {
            amz_date,
            authorization,
            security_token: token.map(str::to_owned),
        }
    }

    /// The signing key of `secret` on `date` (`YYYYMMDD`): the cached one,
    /// or a new one derived and kept.
    fn key_for(&self, secret: &str, date: &str) -> [u8; 32] {
        let mut cached = self.day_key.lock().expect("signing key poisoned");
        if let Some(day) = cached
            .as_ref()
            .filter(|d| d.date == date.as_bytes() && d.secret == secret)
        {
            return day.key;
        }
        let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, self.service.as_bytes());
        let key = hmac(&k_service, b"aws4_request");
        *cached = Some(DayKey {
            date: date.as_bytes().try_into().expect("a date is 8 bytes"),
            secret: secret.to_owned(),
            key,
        });
        key
    }
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// `now` as SigV4 writes it: `YYYYMMDDTHHMMSSZ`, UTC.
fn amz_date(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    use aws_smithy_runtime_api::client::identity::Identity;

    use super::*;

    /// What `aws-sigv4`, the SDK's signer, adds to the same request.
    fn sdk_signature(
        credentials: &Credentials,
        now: SystemTime,
        url: &str,
        region: &str,
        body: &[u8],
    ) -> Signature {
        let identity: Identity = credentials.clone().into();
        let headers = [
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ];
        let signable =
            SignableRequest::new("POST", url, headers.into_iter(), SignableBody::Bytes(body))
                .unwrap();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("bedrock")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut request = http::Request::post(url).body(()).unwrap();
        instructions.apply_to_request_http1x(&mut request);
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        Signature {
            amz_date: header("x-amz-date").unwrap(),
            authorization: header("authorization").unwrap(),
            security_token: header("x-amz-security-token"),
        }
    }

    #[test]
    fn signatures_match_the_sdk_signers_byte_for_byte() {
        let long_term = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", None, None, "t");
        let temporary = Credentials::new(
            "ASIAEXAMPLE",
            "c2VjcmV0LXNlY3JldA==",
            Some("IQoJb3JpZ2luX2VjE token/with+chars=".into()),
            None,
            "t",
        );
        let cases = [
            ("127.0.0.1:19001", "http", "/model/model-a/converse"),
            (
                "bedrock-runtime.us-east-1.amazonaws.com",
                "https",
                "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
            ),
            (
                "bedrock-runtime.eu-west-3.amazonaws.com",
                "https",
                "/model/arn%3Aaws%3Abedrock%3Aeu-west-3%3A1%3Ainference-profile%2Feu.m-v1%3A0/converse",
            ),
        ];
        // A leap day, the turn of a year, now, and far ahead.
        let times = [1_709_208_000, 1_735_689_599, 1_735_689_600, 4_102_444_800]
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .into_iter()
            .chain([SystemTime::now()]);
        for now in times {
            for (host, scheme, path) in cases {
                for credentials in [&long_term, &temporary] {
                    for body in [&b""[..], br#"{"messages":[{"role":"user"}]}"#] {
                        let region = if host.contains("eu-west-3") {
                            "eu-west-3"
                        } else {
                            "us-east-1"
                        };
                        let signer = Signer::new(region, "bedrock");
                        let url = format!("{scheme}://{host}{path}");
                        let expected = sdk_signature(credentials, now, &url, region, body);
                        // Twice: from a fresh key, then from the cached one.
                        for _ in 0..2 {
                            assert_eq!(
                                signer.sign(credentials, now, host, path, body),
                                expected,
                                "{url} at {now:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_new_day_or_a_new_secret_derives_a_new_key() {
        let signer = Signer::new("us-east-1", "bedrock");
        let day = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        let next_day = day + Duration::from_secs(1);
        let a = Credentials::new("AKID", "secret-a", None, None, "t");
        let b = Credentials::new("AKID", "secret-b", None, None, "t");
        for (credentials, now) in [(&a, day), (&a, next_day), (&b, next_day), (&a, next_day)] {
            assert_eq!(
                signer.sign(credentials, now, "h", "/p", b"{}"),
                sdk_signature(credentials, now, "https://h/p", "us-east-1", b"{}")
            );
        }
    }
}

//! The simulator's embedding models, through InvokeModel: Amazon Titan Text
//! Embeddings (one `inputText` a call) and Cohere Embed (up to 96 `texts` a
//! call), with their real request and answer bodies. A vector is a
//! deterministic function of the model and the text (unit length, seeded
//! from SHA-256), so tests can compare them.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::converse::count_tokens;

/// The embedding families Bedrock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingFamily {
    Titan,
    Cohere,
}

impl EmbeddingFamily {
    /// The family of a model id (with or without a cross-region prefix).
    pub fn of(model_id: &str) -> Option<Self> {
        if model_id.contains("amazon.titan-embed-text") || model_id.contains("titan-embed-g1") {
            Some(Self::Titan)
        } else if model_id.contains("cohere.embed") {
            Some(Self::Cohere)
        } else {
            None
        }
    }
}

/// An embedding request, read.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRequest {
    family: EmbeddingFamily,
    texts: Vec<String>,
    dimensions: usize,
    /// Cohere's `embedding_types` was given: answer `embeddings_by_type`.
    by_type: bool,
}

/// Cohere takes at most this many texts a call.
const COHERE_MAX_TEXTS: usize = 96;

impl EmbeddingRequest {
    /// Reads an InvokeModel body for `model_id`, or says (as a
    /// ValidationException would) what is wrong.
    pub fn parse(family: EmbeddingFamily, model_id: &str, body: &[u8]) -> Result<Self, String> {
        let json: Value =
            serde_json::from_slice(body).map_err(|e| format!("Malformed input request: {e}"))?;
        match family {
            EmbeddingFamily::Titan => {
                let text = json
                    .get("inputText")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .ok_or("Malformed input request: required key [inputText] not found")?;
                let v1 = model_id.contains("titan-embed-text-v1") || model_id.contains("g1");
                let dimensions = match json.get("dimensions").and_then(Value::as_u64) {
                    None if v1 => 1_536,
                    None => 1_024,
                    Some(d @ (256 | 512 | 1_024)) if !v1 => d as usize,
                    Some(d) => return Err(format!("Unsupported dimensions: {d}")),
                };
                Ok(Self {
                    family,
                    texts: vec![text.to_owned()],
                    dimensions,
                    by_type: false,
                })
            }
            EmbeddingFamily::Cohere => {
                let texts: Vec<String> = json
                    .get("texts")
                    .and_then(Value::as_array)
                    .ok_or("Malformed input request: required key [texts] not found")?
                    .iter()
                    .map(|t| t.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or("Malformed input request: texts must be strings")?;
                if texts.is_empty() || texts.len() > COHERE_MAX_TEXTS {
                    return Err(format!(
                        "texts must hold 1 to {COHERE_MAX_TEXTS} strings, not {}",
                        texts.len()
                    ));
                }
                if json.get("input_type").and_then(Value::as_str).is_none() {
                    return Err(
                        "Malformed input request: required key [input_type] not found".into(),
                    );
                }
                let default = if model_id.contains("embed-v4") {
                    1_536
                } else {
                    1_024
                };
                let dimensions = json
                    .get("output_dimension")
                    .and_then(Value::as_u64)
                    .map_or(default, |d| d as usize);
                Ok(Self {
                    family,
                    texts,
                    dimensions,
                    by_type: json.get("embedding_types").is_some(),
                })
            }
        }
    }

    /// Input tokens: the words of every text.
    pub fn input_tokens(&self) -> u64 {
        self.texts
            .iter()
            .map(|t| count_tokens(t))
            .sum::<u64>()
            .max(1)
    }

    /// The model's answer.
    pub fn answer(&self, model_id: &str, request_id: &str) -> Value {
        let vectors: Vec<Vec<f32>> = self
            .texts
            .iter()
            .map(|t| vector(model_id, t, self.dimensions))
            .collect();
        match self.family {
            EmbeddingFamily::Titan => json!({
                "embedding": vectors[0],
                "inputTextTokenCount": self.input_tokens(),
            }),
            EmbeddingFamily::Cohere if self.by_type => json!({
                "id": request_id,
                "embeddings": { "float": vectors },
                "texts": self.texts,
                "response_type": "embeddings_by_type",
            }),
            EmbeddingFamily::Cohere => json!({
                "id": request_id,
                "embeddings": vectors,
                "texts": self.texts,
                "response_type": "embeddings_floats",
            }),
        }
    }
}

/// A unit vector of `dimensions` seeded by the model and the text.
fn vector(model_id: &str, text: &str, dimensions: usize) -> Vec<f32> {
    let digest = Sha256::new()
        .chain_update(model_id)
        .chain_update([0])
        .chain_update(text)
        .finalize();
    let seed = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    let mut rng = fastrand::Rng::with_seed(seed);
    let raw: Vec<f32> = (0..dimensions).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TITAN: &str = "amazon.titan-embed-text-v2:0";
    const COHERE: &str = "cohere.embed-english-v3";

    #[test]
    fn titan_embeds_one_text_with_its_dimensions() {
        let r = EmbeddingRequest::parse(
            EmbeddingFamily::Titan,
            TITAN,
            br#"{"inputText":"hello world","dimensions":256}"#,
        )
        .unwrap();
        let answer = r.answer(TITAN, "id");
        let v = answer["embedding"].as_array().unwrap();
        assert_eq!(v.len(), 256);
        assert_eq!(answer["inputTextTokenCount"], 2);
        let norm: f64 = v.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-3);
        assert!(
            EmbeddingRequest::parse(EmbeddingFamily::Titan, TITAN, br#"{"texts":["x"]}"#).is_err()
        );
    }

    #[test]
    fn cohere_embeds_several_texts_and_same_text_same_vector() {
        let r = EmbeddingRequest::parse(
            EmbeddingFamily::Cohere,
            COHERE,
            br#"{"texts":["a","b","a"],"input_type":"search_document","embedding_types":["float"]}"#,
        )
        .unwrap();
        let answer = r.answer(COHERE, "id");
        let v = answer["embeddings"]["float"].as_array().unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], v[2]);
        assert_ne!(v[0], v[1]);
        assert!(
            EmbeddingRequest::parse(EmbeddingFamily::Cohere, COHERE, br#"{"texts":["a"]}"#)
                .is_err()
        );
        assert_eq!(
            EmbeddingFamily::of("us.cohere.embed-v4:0"),
            Some(EmbeddingFamily::Cohere)
        );
        assert_eq!(EmbeddingFamily::of("anthropic.claude-3-haiku"), None);
    }
}

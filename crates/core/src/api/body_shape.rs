//! What routing reads of a Bedrock request's body, and nothing more: that
//! a Converse body has messages, and the output budget a token estimate
//! needs. Everything else is skipped by the parser without being built (a
//! `serde_json::Value` of the whole body was a tree of allocations a
//! request), and the body itself goes upstream untouched.
//!
//! Reading is lenient past the JSON's validity, as a lookup in a `Value`
//! was: a field of the wrong type reads as absent, never as an error.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The scalar `visit_*` methods of a visitor, each answering `$value`.
macro_rules! other_values_are {
    ($value:expr) => {
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// A Converse (or ConverseStream) request.
#[derive(Debug, Deserialize)]
pub(super) struct ConverseShape {
    pub messages: Option<Length>,
    #[serde(rename = "inferenceConfig")]
    pub inference_config: Option<ObjectOr<ConverseInference>>,
}

impl ConverseShape {
    /// Its `messages` array has at least one element.
    pub fn has_messages(&self) -> bool {
        self.messages.as_ref().is_some_and(|m| m.0 > 0)
    }

    /// Its `inferenceConfig.maxTokens`.
    pub fn max_tokens(&self) -> Option<u64> {
        self.inference_config.as_ref()?.0.as_ref()?.max_tokens.0
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ConverseInference {
    #[serde(rename = "maxTokens", default)]
    max_tokens: Count,
}

/// An InvokeModel request: the model's own JSON, whose output budget each
/// model family spells its own way.
#[derive(Debug, Deserialize)]
pub(super) struct InvokeShape {
    /// Anthropic, Mistral, Cohere.
    #[serde(default)]
    max_tokens: Count,
    /// Meta Llama.
    #[serde(default)]
    max_gen_len: Count,
    /// Amazon Titan.
    #[serde(rename = "textGenerationConfig")]
    text_generation_config: Option<ObjectOr<TitanConfig>>,
    /// Amazon Nova.
    #[serde(rename = "inferenceConfig")]
    inference_config: Option<ObjectOr<NovaConfig>>,
}

#[derive(Debug, Deserialize)]
struct TitanConfig {
    #[serde(rename = "maxTokenCount", default)]
    max_token_count: Count,
}

#[derive(Debug, Deserialize)]
struct NovaConfig {
    #[serde(default)]
    max_new_tokens: Count,
}

impl InvokeShape {
    /// The output budget, in the first spelling present.
    pub fn output_budget(&self) -> Option<u64> {
        let titan = || {
            self.text_generation_config
                .as_ref()?
                .0
                .as_ref()?
                .max_token_count
                .0
        };
        let nova = || self.inference_config.as_ref()?.0.as_ref()?.max_new_tokens.0;
        self.max_tokens
            .0
            .or(self.max_gen_len.0)
            .or_else(titan)
            .or_else(nova)
    }
}

/// `T` when the value is a JSON object, else `None`.
#[derive(Debug)]
pub(super) struct ObjectOr<T>(pub Option<T>);

/// A whole number that fits a `u64`; anything else reads as absent.
#[derive(Debug, Default)]
pub(super) struct Count(pub Option<u64>);

/// The length of a JSON array, its elements skipped; not an array reads as 0.
#[derive(Debug)]
pub(super) struct Length(pub usize);

impl<T> ObjectOr<T> {
    /// The object, when the whole body was one.
    pub fn into_inner(self) -> Option<T> {
        self.0
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for ObjectOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(PhantomData<T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for Object<T> {
            type Value = ObjectOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| ObjectOr(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|_| ObjectOr(None))
            }
            other_values_are!(ObjectOr(None));
        }
        d.deserialize_any(Object(PhantomData))
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Whole;
        impl<'de> Visitor<'de> for Whole {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
                Ok(Count(Some(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Count, A::Error> {
                skip_map(map).map(|_| Count(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Count, A::Error> {
                skip_seq(seq).map(|_| Count(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
        }
        d.deserialize_any(Whole)
    }
}

impl<'de> Deserialize<'de> for Length {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Array;
        impl<'de> Visitor<'de> for Array {
            type Value = Length;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Length, A::Error> {
                skip_seq(seq).map(Length)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Length, A::Error> {
                skip_map(map).map(|_| Length(0))
            }
            other_values_are!(Length(0));
        }
        d.deserialize_any(Array)
    }
}

/// Skips an array's elements, counting them.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<usize, A::Error> {
    let mut n = 0;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Skips an object's entries.
fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converse(body: &str) -> Option<ConverseShape> {
        serde_json::from_str::<ObjectOr<ConverseShape>>(body)
            .unwrap()
            .into_inner()
    }

    fn invoke_budget(body: &str) -> Option<u64> {
        serde_json::from_str::<ObjectOr<InvokeShape>>(body)
            .unwrap()
            .into_inner()
            .unwrap()
            .output_budget()
    }

    #[test]
    fn a_converse_body_says_its_messages_and_budget() {
        let shape = converse(
            r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"system":[{"text":"x"}],"inferenceConfig":{"maxTokens":16,"temperature":0.5}}"#,
        )
        .unwrap();
        assert!(shape.has_messages());
        assert_eq!(shape.max_tokens(), Some(16));
    }

    #[test]
    fn the_wrong_types_read_as_absent() {
        for body in [
            r#"{"messages":[],"inferenceConfig":{"maxTokens":-1}}"#,
            r#"{"messages":"many","inferenceConfig":{"maxTokens":1.5}}"#,
            r#"{"messages":{"a":[1]},"inferenceConfig":[16]}"#,
            r#"{"messages":null,"inferenceConfig":"16"}"#,
            r#"{"inferenceConfig":{"maxTokens":{"n":16}}}"#,
        ] {
            let shape = converse(body).unwrap();
            assert!(!shape.has_messages(), "{body}");
            assert_eq!(shape.max_tokens(), None, "{body}");
        }
    }

    #[test]
    fn only_an_object_is_a_body_and_only_json_is_read() {
        for body in ["[1,2]", "\"text\"", "3", "null", "true"] {
            assert!(converse(body).is_none(), "{body}");
        }
        for body in ["{", "{\"messages\":[}", "", "{} trailing"] {
            assert!(
                serde_json::from_str::<ObjectOr<ConverseShape>>(body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn each_model_family_spells_its_budget_its_own_way() {
        assert_eq!(
            invoke_budget(r#"{"max_tokens":10,"messages":[]}"#),
            Some(10)
        );
        assert_eq!(
            invoke_budget(r#"{"prompt":"x","max_gen_len":20}"#),
            Some(20)
        );
        assert_eq!(
            invoke_budget(r#"{"inputText":"x","textGenerationConfig":{"maxTokenCount":30}}"#),
            Some(30)
        );
        assert_eq!(
            invoke_budget(r#"{"messages":[],"inferenceConfig":{"max_new_tokens":40}}"#),
            Some(40)
        );
        assert_eq!(
            invoke_budget(r#"{"max_tokens":"10","max_gen_len":5}"#),
            Some(5)
        );
        assert_eq!(invoke_budget(r#"{"prompt":"x"}"#), None);
    }
}

//! What an answer says it used, in the four kinds of token Bedrock counts
//! (and prices) apart: input, output, and the input read from or written
//! to the prompt cache. Each wire shape says it in its own words; this is
//! the one place that reads them, so quotas, metrics and cost agree.
//!
//! Every reader deserializes into a struct of the usage fields only: serde
//! skips the rest of the answer without building it (a `Value` of a whole
//! answer once cost 2.5% of the gateway's CPU).

use serde::Deserialize;

/// Tokens an attempt used, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input tokens read in full (not from the cache).
    pub input: u64,
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write: u64,
}

impl TokenUsage {
    /// A usage of input tokens only (embeddings, for one).
    pub fn input(input: u64) -> Self {
        Self {
            input,
            ..Self::default()
        }
    }

    /// Each kind's count, by its name in metrics and reports.
    pub fn kinds(&self) -> [(&'static str, u64); 4] {
        [
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        ]
    }

    /// Every token of every kind: what a tokens-per-minute quota counts.
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }

    /// A Converse answer's `usage` (`inputTokens`, `outputTokens`,
    /// `cacheReadInputTokens`, `cacheWriteInputTokens`), or a
    /// ConverseStream `metadata` event's, whose payload carries it the same way.
    pub fn of_converse(body: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Answer {
            usage: Option<ConverseUsage>,
        }
        let answer: Answer = serde_json::from_slice(body).ok()?;
        answer.usage?.into_usage()
    }

    /// An Anthropic message's `usage` (`input_tokens`, `output_tokens`,
    /// `cache_read_input_tokens`, `cache_creation_input_tokens`): the body
    /// of InvokeModel for Claude and of `/v1/messages`.
    pub fn of_anthropic_message(body: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Message {
            usage: Option<AnthropicUsage>,
        }
        #[derive(Deserialize)]
        struct AnthropicUsage {
            input_tokens: Option<u64>,
            output_tokens: Option<u64>,
            cache_read_input_tokens: Option<u64>,
            cache_creation_input_tokens: Option<u64>,
        }
        let usage = serde_json::from_slice::<Message>(body).ok()?.usage?;
        Some(Self {
            input: usage.input_tokens?,
            output: usage.output_tokens.unwrap_or(0),
            cache_read: usage.cache_read_input_tokens.unwrap_or(0),
            cache_write: usage.cache_creation_input_tokens.unwrap_or(0),
        })
    }

    /// An InvokeModel answer's usage: the Anthropic body's when it has one,
    /// else what Bedrock's headers counted (every model family has them).
    pub fn of_invoke(body: &[u8], counted: Option<Self>) -> Option<Self> {
        Self::of_anthropic_message(body).or(counted)
    }

    /// An InvokeModel stream chunk's usage, from its payload
    /// (`{"bytes": "<base64 of the model's event>"}`): Bedrock adds
    /// `amazon-bedrock-invocationMetrics` to the last chunk, whatever the
    /// model family. Other chunks say nothing.
    pub fn of_invoke_chunk(payload: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Payload<'a> {
            #[serde(borrow)]
            bytes: std::borrow::Cow<'a, str>,
        }
        #[derive(Deserialize)]
        struct Chunk {
            #[serde(rename = "amazon-bedrock-invocationMetrics")]
            metrics: Option<InvocationMetrics>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct InvocationMetrics {
            input_token_count: Option<u64>,
            output_token_count: Option<u64>,
            cache_read_input_token_count: Option<u64>,
            cache_write_input_token_count: Option<u64>,
        }
        let encoded = serde_json::from_slice::<Payload<'_>>(payload).ok()?.bytes;
        let bytes = aws_smithy_types::base64::decode(encoded.as_ref()).ok()?;
        let metrics = serde_json::from_slice::<Chunk>(&bytes).ok()?.metrics?;
        Some(Self {
            input: metrics.input_token_count?,
            output: metrics.output_token_count.unwrap_or(0),
            cache_read: metrics.cache_read_input_token_count.unwrap_or(0),
            cache_write: metrics.cache_write_input_token_count.unwrap_or(0),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_write_input_tokens: Option<u64>,
}

impl ConverseUsage {
    fn into_usage(self) -> Option<TokenUsage> {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_write = self.cache_write_input_tokens.unwrap_or(0);
        match (self.input_tokens, self.output_tokens) {
            (Some(input), output) => Some(TokenUsage {
                input,
                output: output.unwrap_or(0),
                cache_read,
                cache_write,
            }),
            // A total alone still settles a quota; call it all input.
            (None, _) => self.total_tokens.map(|total| TokenUsage {
                input: total.saturating_sub(cache_read + cache_write),
                output: 0,
                cache_read,
                cache_write,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenUsage;

    #[test]
    fn a_converse_answer_says_each_kind() {
        let body = br#"{"output":{},"usage":{"inputTokens":3,"outputTokens":2,"totalTokens":105,"cacheReadInputTokens":100,"cacheWriteInputTokens":0}}"#;
        let usage = TokenUsage::of_converse(body).unwrap();
        assert_eq!(
            usage,
            TokenUsage {
                input: 3,
                output: 2,
                cache_read: 100,
                cache_write: 0
            }
        );
        assert_eq!(usage.total(), 105);
    }

    #[test]
    fn a_converse_total_alone_is_input() {
        let usage = TokenUsage::of_converse(br#"{"usage":{"totalTokens":5}}"#).unwrap();
        assert_eq!(usage, TokenUsage::input(5));
    }

    #[test]
    fn answers_without_usage_say_nothing() {
        assert_eq!(TokenUsage::of_converse(br#"{"output":{}}"#), None);
        assert_eq!(TokenUsage::of_converse(br#"{"usage":null}"#), None);
        assert_eq!(
            TokenUsage::of_converse(br#"{"usage":{"totalTokens":"many"}}"#),
            None
        );
        assert_eq!(TokenUsage::of_converse(b"not json"), None);
        assert_eq!(TokenUsage::of_anthropic_message(b"{}"), None);
    }

    #[test]
    fn an_anthropic_message_counts_cache_reads_and_writes() {
        let body = br#"{"usage":{"input_tokens":10,"output_tokens":5,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000}}"#;
        let usage = TokenUsage::of_anthropic_message(body).unwrap();
        assert_eq!(usage.cache_write, 100);
        assert_eq!(usage.cache_read, 1000);
        assert_eq!(usage.total(), 1115);
    }

    #[test]
    fn an_invoke_answer_without_a_body_usage_takes_the_headers_count() {
        let counted = TokenUsage {
            input: 7,
            output: 3,
            ..TokenUsage::default()
        };
        assert_eq!(
            TokenUsage::of_invoke(br#"{"generation":"hi"}"#, Some(counted)),
            Some(counted)
        );
    }
}

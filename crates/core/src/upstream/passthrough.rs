//! SDK interceptors that let a stream's bytes pass through unchanged: the
//! client's request body goes upstream as it came, and Bedrock's frames come
//! back as they were sent.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use aws_sdk_bedrockruntime::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextMut,
};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use futures::channel::mpsc;
use http_body::{Body, Frame, SizeHint};

/// Replaces the body the SDK serialised with the client's own bytes, before
/// signing so the signature covers what is sent.
#[derive(Debug)]
pub struct RawRequestBody {
    body: Bytes,
}

impl RawRequestBody {
    pub fn new(body: Bytes) -> Self {
        Self { body }
    }
}

impl Intercept for RawRequestBody {
    fn name(&self) -> &'static str {
        "switchyard::RawRequestBody"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        *request.body_mut() = SdkBody::from(self.body.clone());
        request
            .headers_mut()
            .insert("content-length", self.body.len().to_string());
        Ok(())
    }
}

/// Passes the attempt's W3C trace headers on to Bedrock (taken when the
/// attempt starts, inside its span).
#[derive(Debug)]
pub struct TraceHeaders {
    headers: Vec<(&'static str, String)>,
}

impl TraceHeaders {
    /// The current span's headers.
    pub fn current() -> Self {
        Self {
            headers: crate::telemetry::current_headers(),
        }
    }
}

impl Intercept for TraceHeaders {
    fn name(&self) -> &'static str {
        "switchyard::TraceHeaders"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let headers = context.request_mut().headers_mut();
        for (name, value) in &self.headers {
            headers.insert(*name, value.clone());
        }
        Ok(())
    }
}

/// Copies every chunk of a streaming answer into a channel while the SDK
/// decodes it, so the raw frames can be forwarded to the client.
#[derive(Debug)]
pub struct StreamTee {
    sink: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
}

impl StreamTee {
    pub fn new(sink: mpsc::UnboundedSender<Bytes>) -> Self {
        Self {
            sink: Mutex::new(Some(sink)),
        }
    }
}

impl Intercept for StreamTee {
    fn name(&self) -> &'static str {
        "switchyard::StreamTee"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Only a successful answer is a stream worth forwarding; errors are
        // reported through the SDK's error instead.
        if !context.response().status().is_success() {
            return Ok(());
        }
        let Some(sink) = self.sink.lock().expect("tee poisoned").take() else {
            return Ok(());
        };
        let response = context.response_mut();
        let inner = response.take_body();
        *response.body_mut() = SdkBody::from_body_1_x(TeeBody { inner, sink });
        Ok(())
    }
}

struct TeeBody {
    inner: SdkBody,
    sink: mpsc::UnboundedSender<Bytes>,
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                // A closed receiver means the client left; the SDK may finish alone.
                let _ = self.sink.unbounded_send(data.clone());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

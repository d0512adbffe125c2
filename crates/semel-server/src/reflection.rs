//! gRPC server reflection (v1 and v1alpha), for `grpcurl` and `buf curl`.
//!
//! tonic-reflection's service lists every service of its descriptors
//! (`semel.v1.SourceService`, which the broker does not serve) and ends the
//! whole stream on the first unknown symbol. This one lists only the services
//! served, answers each request on its own (an unknown symbol gets an
//! `error_response`, the stream goes on, as the reflection protocol says),
//! and also holds `google.rpc.*`, so a client can decode the `ErrorInfo`,
//! `BadRequest` and `RetryInfo` details of Semel's errors.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use prost::Message as _;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};
use tokio_stream::{Stream, StreamExt as _};

/// What reflection can tell: files, the symbols they define, the services served.
#[derive(Debug, Default)]
pub struct ReflectionIndex {
    /// File name → (encoded descriptor, names of its dependencies).
    files: BTreeMap<String, (Vec<u8>, Vec<String>)>,
    /// Fully qualified symbol → the file defining it.
    symbols: HashMap<String, String>,
    services: Vec<String>,
}

/// The answer to one request: descriptors, service names, or an error.
enum Answer {
    Files(Vec<Vec<u8>>),
    Services(Vec<String>),
    Extensions(String),
    Error(tonic::Code, String),
}

impl ReflectionIndex {
    /// Indexes the encoded descriptor sets; `served` are the services to
    /// list, each of which must be defined in them.
    pub fn new(sets: &[&[u8]], served: &[&str]) -> anyhow::Result<ReflectionIndex> {
        let mut index = ReflectionIndex::default();
        for set in sets {
            for file in FileDescriptorSet::decode(*set)?.file {
                index.add(file);
            }
        }
        for name in served {
            anyhow::ensure!(
                index.symbols.contains_key(*name),
                "reflection: the served service {name} has no descriptor"
            );
            index.services.push((*name).to_owned());
        }
        Ok(index)
    }

    fn add(&mut self, mut file: FileDescriptorProto) {
        // tonic-types names its files `error_details.proto` and
        // `status.proto`; clients expect the path their package gives
        // (`google/rpc/status.proto`), as every import of them says.
        if !file.name().contains('/') && !file.package().is_empty() {
            let path = format!("{}/{}", file.package().replace('.', "/"), file.name());
            file.name = Some(path);
        }
        let name = file.name().to_owned();
        if self.files.contains_key(&name) {
            return;
        }
        let prefix = match file.package() {
            "" => String::new(),
            p => format!("{p}."),
        };
        let mut symbols = Vec::new();
        for m in &file.message_type {
            message_symbols(&prefix, m, &mut symbols);
        }
        for e in &file.enum_type {
            symbols.push(format!("{prefix}{}", e.name()));
        }
        for s in &file.service {
            let service = format!("{prefix}{}", s.name());
            for m in &s.method {
                symbols.push(format!("{service}.{}", m.name()));
            }
            symbols.push(service);
        }
        for e in &file.extension {
            symbols.push(format!("{prefix}{}", e.name()));
        }
        for s in symbols {
            self.symbols.entry(s).or_insert_with(|| name.clone());
        }
        let deps = file.dependency.clone();
        self.files.insert(name, (file.encode_to_vec(), deps));
    }

    /// The services listed.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The file and every file it depends on, the file first.
    fn with_dependencies(&self, name: &str) -> Answer {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![name.to_owned()];
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            match self.files.get(&n) {
                Some((bytes, deps)) => {
                    out.push(bytes.clone());
                    todo.extend(deps.iter().rev().cloned());
                }
                // A dependency we do not hold: the client may know it
                // (well-known types); the first file must exist.
                None if n == name => {
                    return Answer::Error(
                        tonic::Code::NotFound,
                        format!("file {name:?} not found"),
                    );
                }
                None => {}
            }
        }
        Answer::Files(out)
    }

    fn file_containing_symbol(&self, symbol: &str) -> Answer {
        match self.symbols.get(symbol.trim_start_matches('.')) {
            Some(file) => self.with_dependencies(file),
            None => Answer::Error(
                tonic::Code::NotFound,
                format!("symbol {symbol:?} not found"),
            ),
        }
    }
}

fn message_symbols(prefix: &str, m: &DescriptorProto, out: &mut Vec<String>) {
    let name = format!("{prefix}{}", m.name());
    let nested = format!("{name}.");
    for n in &m.nested_type {
        message_symbols(&nested, n, out);
    }
    for e in &m.enum_type {
        out.push(format!("{nested}{}", e.name()));
    }
    out.push(name);
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// The same service for both versions of the protocol, whose messages have
/// the same shape in different packages.
macro_rules! reflection_service {
    ($name:ident) => {
        /// Server reflection over [`ReflectionIndex`].
        #[derive(Debug, Clone)]
        pub struct $name(pub Arc<ReflectionIndex>);

        impl $name {
            fn answer(&self, req: ServerReflectionRequest) -> ServerReflectionResponse {
                let index = &self.0;
                let answer = match &req.message_request {
                    None => Answer::Error(
                        tonic::Code::InvalidArgument,
                        "the request names nothing to reflect".into(),
                    ),
                    Some(MessageRequest::FileByFilename(f)) => index.with_dependencies(f),
                    Some(MessageRequest::FileContainingSymbol(s)) => {
                        index.file_containing_symbol(s)
                    }
                    Some(MessageRequest::FileContainingExtension(_)) => {
                        Answer::Error(tonic::Code::NotFound, "no extensions are defined".into())
                    }
                    Some(MessageRequest::AllExtensionNumbersOfType(t)) => {
                        Answer::Extensions(t.clone())
                    }
                    Some(MessageRequest::ListServices(_)) => {
                        Answer::Services(index.services().to_vec())
                    }
                };
                let message_response = match answer {
                    Answer::Files(file_descriptor_proto) => {
                        MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                            file_descriptor_proto,
                        })
                    }
                    Answer::Services(names) => {
                        MessageResponse::ListServicesResponse(ListServiceResponse {
                            service: names
                                .into_iter()
                                .map(|name| ServiceResponse { name })
                                .collect(),
                        })
                    }
                    // Clients (grpcurl) expect an empty list, not an error.
                    Answer::Extensions(base_type_name) => {
                        MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                            base_type_name,
                            extension_number: Vec::new(),
                        })
                    }
                    Answer::Error(code, error_message) => {
                        MessageResponse::ErrorResponse(ErrorResponse {
                            error_code: code as i32,
                            error_message,
                        })
                    }
                };
                ServerReflectionResponse {
                    valid_host: req.host.clone(),
                    original_request: Some(req),
                    message_response: Some(message_response),
                }
            }
        }

        #[tonic::async_trait]
        impl ServerReflection for $name {
            type ServerReflectionInfoStream = ResponseStream<ServerReflectionResponse>;

            async fn server_reflection_info(
                &self,
                request: tonic::Request<tonic::Streaming<ServerReflectionRequest>>,
            ) -> Result<tonic::Response<Self::ServerReflectionInfoStream>, tonic::Status> {
                let me = self.clone();
                let answers = request
                    .into_inner()
                    .map(move |req| req.map(|req| me.answer(req)));
                Ok(tonic::Response::new(Box::pin(answers)))
            }
        }
    };
}

pub mod v1 {
    //! `grpc.reflection.v1`.
    use super::*;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    pub use tonic_reflection::pb::v1::server_reflection_server::{
        ServerReflection, ServerReflectionServer,
    };
    use tonic_reflection::pb::v1::{
        ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
        ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
    };
    reflection_service!(Reflection);
}

pub mod v1alpha {
    //! `grpc.reflection.v1alpha`, which older tools speak.
    use super::*;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    pub use tonic_reflection::pb::v1alpha::server_reflection_server::{
        ServerReflection, ServerReflectionServer,
    };
    use tonic_reflection::pb::v1alpha::{
        ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
        ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
    };
    reflection_service!(Reflection);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ReflectionIndex {
        ReflectionIndex::new(
            &[
                crate::proto::FILE_DESCRIPTOR_SET,
                tonic_types::pb::FILE_DESCRIPTOR_SET,
            ],
            &["semel.v1.LookupService"],
        )
        .expect("index")
    }

    #[test]
    fn symbols_resolve_to_their_file_with_its_dependencies() {
        let index = index();
        let Answer::Files(files) = index.file_containing_symbol("google.rpc.ErrorInfo") else {
            panic!("ErrorInfo is not reflected");
        };
        let first = FileDescriptorProto::decode(files[0].as_slice()).expect("decode");
        assert_eq!(first.name(), "google/rpc/error_details.proto");
        let Answer::Files(files) = index.file_containing_symbol("semel.v1.LookupService.Lookup")
        else {
            panic!("a method is a symbol");
        };
        assert!(files.len() > 1, "its imports come with it");
        assert!(matches!(
            index.file_containing_symbol("semel.v1.NoSuch"),
            Answer::Error(tonic::Code::NotFound, _)
        ));
        assert!(
            ReflectionIndex::new(&[crate::proto::FILE_DESCRIPTOR_SET], &["semel.v1.Nothing"])
                .is_err()
        );
    }
}

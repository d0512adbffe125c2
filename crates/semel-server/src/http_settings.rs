//! The HTTP/JSON face's settings (`[http]` in the configuration), read by
//! the configuration and the demo here, and served by `semel-http`.

pub use semel_config::settings::HttpSettings;

//! Files in and out of a prediction.
//!
//! Inputs that are files (`Path`, `File`) arrive as `http(s)://` URLs or `data:` URIs; they are
//! fetched into a temporary directory of the prediction before the worker sees them, within a
//! size limit, so the predictor gets a local path. Paths on the daemon's own disk are refused: a
//! caller must not be able to make a predictor read the daemon's files. Outputs that are files
//! come back from the worker as `{"$hearth_path": "/abs/path"}` and leave as a `data:` URI, or
//! as the URL they were uploaded to with `PUT` when the daemon has an upload URL (Cog's
//! `--upload-url`).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures::StreamExt;
use serde_json::Value;

use crate::protocol::Schema;

/// The key the worker marks a file output with.
const PATH_MARKER: &str = "$hearth_path";

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A file input that cannot be used; `field` names it.
    #[error("{field}: {message}")]
    Input { field: String, message: String },
    #[error("could not read the output file {path}: {source}")]
    Output { path: String, source: std::io::Error },
    #[error("could not upload {file} to {url}: {message}")]
    Upload { file: String, url: String, message: String },
    #[error("could not create a temporary directory: {0}")]
    TempDir(std::io::Error),
}

/// How files move: the HTTP client, the largest input, and where outputs are uploaded.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub client: reqwest::Client,
    pub max_input_bytes: u64,
    /// Cog's `--upload-url`: outputs are `PUT` to `{upload_url}/{filename}`.
    pub upload_url: Option<String>,
}

/// The temporary files of one prediction; removed when dropped.
pub struct InputFiles {
    dir: tempfile::TempDir,
}

impl InputFiles {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Replaces every file input in `input` with a local path, fetching URLs and decoding data
/// URIs into a new temporary directory.
pub async fn fetch_inputs(
    schema: &Schema,
    input: &mut Value,
    config: &FileConfig,
) -> Result<InputFiles, FileError> {
    let dir =
        tempfile::Builder::new().prefix("hearth-input-").tempdir().map_err(FileError::TempDir)?;
    let files: Vec<(String, bool)> =
        schema.file_inputs().map(|(name, is_list)| (name.to_owned(), is_list)).collect();
    let mut count = 0usize;
    for (field, is_list) in files {
        let Some(value) = input.get_mut(&field) else { continue };
        let values: Vec<&mut Value> = match (is_list, value) {
            (true, Value::Array(items)) => items.iter_mut().collect(),
            (_, Value::Null) => continue,
            (_, value) => vec![value],
        };
        for value in values {
            let Value::String(source) = value else {
                return Err(input_error(&field, "must be a URL string"));
            };
            count += 1;
            let path = fetch_one(&field, source, dir.path(), count, config).await?;
            *value = Value::String(path.to_string_lossy().into_owned());
        }
    }
    Ok(InputFiles { dir })
}

fn input_error(field: &str, message: impl Into<String>) -> FileError {
    FileError::Input { field: field.to_owned(), message: message.into() }
}

async fn fetch_one(
    field: &str,
    source: &str,
    dir: &Path,
    n: usize,
    config: &FileConfig,
) -> Result<PathBuf, FileError> {
    let too_big = || input_error(field, format!("is larger than {} bytes", config.max_input_bytes));
    let (name, bytes) = if let Some(rest) = source.strip_prefix("data:") {
        let bytes = decode_data_uri(rest).map_err(|m| input_error(field, m))?;
        if bytes.len() as u64 > config.max_input_bytes {
            return Err(too_big());
        }
        let mime = rest.split([';', ',']).next().unwrap_or_default();
        let extension = mime_guess::get_mime_extensions_str(mime)
            .and_then(|exts| exts.first())
            .map(|ext| format!(".{ext}"))
            .unwrap_or_default();
        (format!("input{extension}"), bytes)
    } else if source.starts_with("http://") || source.starts_with("https://") {
        let bytes = download(field, source, config).await?;
        (url_file_name(source), bytes)
    } else {
        return Err(input_error(field, "must be an http(s):// URL or a data: URI"));
    };
    // A directory per file keeps the original name (predictors often look at the extension)
    // without two inputs of the same name colliding.
    let file_dir = dir.join(n.to_string());
    let write = async {
        tokio::fs::create_dir_all(&file_dir).await?;
        tokio::fs::write(file_dir.join(&name), &bytes).await
    };
    write.await.map_err(|e| input_error(field, format!("could not be saved: {e}")))?;
    Ok(file_dir.join(name))
}

async fn download(field: &str, url: &str, config: &FileConfig) -> Result<Vec<u8>, FileError> {
    let fail =
        |message: String| input_error(field, format!("could not be fetched from {url}: {message}"));
    let response = config.client.get(url).send().await.map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("the server answered {}", response.status())));
    }
    if response.content_length().is_some_and(|len| len > config.max_input_bytes) {
        return Err(input_error(field, format!("is larger than {} bytes", config.max_input_bytes)));
    }
    let mut bytes = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        if (bytes.len() + chunk.len()) as u64 > config.max_input_bytes {
            return Err(input_error(
                field,
                format!("is larger than {} bytes", config.max_input_bytes),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The payload of a `data:` URI (everything after `data:`), base64 or percent-encoded.
fn decode_data_uri(rest: &str) -> Result<Vec<u8>, String> {
    let (meta, data) = rest.split_once(',').ok_or("is a data: URI without a `,`")?;
    if meta.ends_with(";base64") {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| format!("is a data: URI whose base64 does not decode: {e}"))
    } else {
        Ok(percent_decode(data))
    }
}

/// RFC 3986 percent-decoding; a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

fn url_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        "input".into()
    } else {
        clean
    }
}

/// Turns every file the worker marked in `output` into a data URI or an uploaded URL.
pub async fn encode_outputs(output: Value, config: &FileConfig) -> Result<Value, FileError> {
    match output {
        Value::Object(map) if map.len() == 1 && map.contains_key(PATH_MARKER) => {
            let path = map.get(PATH_MARKER).and_then(Value::as_str).unwrap_or_default().to_owned();
            encode_file(&path, config).await.map(Value::String)
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(Box::pin(encode_outputs(item, config)).await?);
            }
            Ok(Value::Array(out))
        }
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (key, value) in map {
                out.insert(key, Box::pin(encode_outputs(value, config)).await?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other),
    }
}

async fn encode_file(path: &str, config: &FileConfig) -> Result<String, FileError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| FileError::Output { path: path.to_owned(), source })?;
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_else(|| "output".into());
    match &config.upload_url {
        None => {
            let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
            Ok(format!("data:{mime};base64,{data}"))
        }
        Some(base) => {
            let url = format!("{}/{}", base.trim_end_matches('/'), name);
            let fail = |message: String| FileError::Upload {
                file: name.clone(),
                url: url.clone(),
                message,
            };
            let response = config
                .client
                .put(&url)
                .header(reqwest::header::CONTENT_TYPE, mime.as_ref())
                .body(bytes)
                .send()
                .await
                .map_err(|e| fail(e.to_string()))?;
            if !response.status().is_success() {
                return Err(fail(format!("the server answered {}", response.status())));
            }
            // Cog reports the uploaded file's final location when the server gives one.
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            Ok(location.unwrap_or_else(|| {
                response.url().as_str().split('?').next().unwrap_or(&url).to_owned()
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Schema {
        Schema {
            input: json!({"properties": {
                "image": {"type": "string", "format": "uri"},
                "images": {"type": "array", "items": {"type": "string", "format": "uri"}},
                "scale": {"type": "number"},
            }}),
            output: json!({"type": "string", "format": "uri"}),
            components: serde_json::Map::new(),
            streams: false,
            streaming: false,
            cog_version: String::new(),
        }
    }

    fn config(max: u64) -> FileConfig {
        FileConfig { client: reqwest::Client::new(), max_input_bytes: max, upload_url: None }
    }

    #[tokio::test]
    async fn data_uris_become_local_files_and_go_with_the_prediction() {
        let mut input = json!({
            "image": "data:image/png;base64,aGVsbG8=",
            "images": ["data:text/plain,a%20b", "data:,x"],
            "scale": 2,
        });
        let files = fetch_inputs(&schema(), &mut input, &config(1024)).await.unwrap();
        let image = input["image"].as_str().unwrap().to_owned();
        assert!(image.ends_with(".png"), "{image}");
        assert_eq!(std::fs::read(&image).unwrap(), b"hello");
        assert_eq!(std::fs::read(input["images"][0].as_str().unwrap()).unwrap(), b"a b");
        assert_eq!(input["scale"], 2);
        let dir = files.path().to_owned();
        drop(files);
        assert!(!dir.exists(), "temporary inputs are removed with the prediction");
    }

    #[tokio::test]
    async fn bad_file_inputs_name_the_field() {
        for (value, expected) in [
            ("/etc/passwd", "must be an http(s):// URL or a data: URI"),
            ("data:;base64,@@@", "base64 does not decode"),
            ("data:,0123456789abc", "larger than 8 bytes"),
        ] {
            let mut input = json!({ "image": value });
            let err = fetch_inputs(&schema(), &mut input, &config(8)).await.err().unwrap();
            let message = err.to_string();
            assert!(message.starts_with("image: "), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }

    #[tokio::test]
    async fn file_outputs_become_data_uris() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.png");
        std::fs::write(&path, b"hello").unwrap();
        let output = json!({"images": [{ PATH_MARKER: path }], "n": 1});
        let encoded = encode_outputs(output, &config(0)).await.unwrap();
        assert_eq!(encoded, json!({"images": ["data:image/png;base64,aGVsbG8="], "n": 1}));
    }
}

//! `streetclip serve` end to end, over loopback: every endpoint's answer equals the CLI's for
//! the same photos (the tiny model, hierarchically and as a geocell export), bad input gets
//! its status and a JSON error, concurrent clients share batches and each gets its own
//! answer, a full queue answers 503, slow and idle clients are cut off with bounded memory,
//! SIGTERM finishes what is in flight, and the map page works in a real browser (Chromium).

mod common;

use common::{fixture, im2gps3k_images, jpeg_claiming, tmpdir};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A `streetclip serve` process on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_streetclip"))
            .args(["serve", "--addr", "127.0.0.1:0", "--model"])
            .arg(model)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (ready, url) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find(" on http://") {
                    let url: Vec<&str> = line[i + 4..].split('/').take(3).collect();
                    let _ = ready.send(url.join("/"));
                }
                let mut log = lines.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let url = url
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the server did not start:\n{}", log.lock().unwrap()));
        Self { child, url, log }
    }

    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Answer {
        let response = agent()
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .send(body);
        Answer::of(response.unwrap())
    }

    fn get(&self, path: &str) -> Answer {
        Answer::of(agent().get(format!("{}{path}", self.url)).call().unwrap())
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// A response: status, `Retry-After`, JSON body.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    json: Value,
}

impl Answer {
    fn of(mut r: ureq::http::Response<ureq::Body>) -> Self {
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let text = r.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Self {
            status,
            retry_after,
            json,
        }
    }

    /// The error's message, checking the error shape and status.
    fn error(&self, status: u16) -> &str {
        assert_eq!(self.status, status, "{}", self.json);
        assert_eq!(self.json["error"]["status"], status, "{}", self.json);
        self.json["error"]["message"].as_str().unwrap()
    }
}

/// A `multipart/form-data` body of files: (content type, body).
fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "streetclip-test-7f3a9c";
    let mut body = vec![];
    for (name, bytes) in files {
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").unwrap();
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `streetclip ARGS`'s standard output as JSON.
fn cli_json(args: &[&std::ffi::OsStr]) -> Value {
    serde_json::from_slice(&common::streetclip_ok(args).stdout).unwrap()
}

/// The same JSON: equal keys, strings and shapes; numbers within 1e-6 (relative above 1).
fn assert_same(what: &str, a: &Value, b: &Value) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                "{what}: {x} vs {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{what}: lengths");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_same(&format!("{what}[{i}]"), x, y);
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(x), keys(y), "{what}: keys");
            for (k, v) in x {
                assert_same(&format!("{what}.{k}"), v, &y[k]);
            }
        }
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// A geocell export of the tiny model: 3 cells, a seeded random head (so photos differ), an
/// index of 6 training images.
fn geocell_export(dir: &Path) -> PathBuf {
    use streetclip::eval::retrieval_index::RetrievalIndex;
    use tch::{Device, Kind, Tensor};
    let dir = dir.join("geocells");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-p14-336")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    tch::manual_seed(7);
    let d = 24;
    let cpu = (Kind::Float, Device::Cpu);
    streetclip::formats::tensor_io::write(
        &dir.join("head.safetensors"),
        &[
            (
                "classifier_head.weight".into(),
                Tensor::randn([3, d], cpu) * 1.5,
            ),
            ("classifier_head.bias".into(), Tensor::zeros([3], cpu)),
        ],
    )
    .unwrap();
    let names = [
        "Bayern, Germany",
        "Tokyo, Japan",
        "California, United States",
    ];
    std::fs::write(
        dir.join("head.json"),
        serde_json::json!({"method": "geocells", "classes": names}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("geocells.json"),
        r#"{"cells": [
            {"name": "Bayern, Germany", "country": "Germany", "regions": ["Bayern"], "lat": 48.1, "lon": 11.6, "samples": 2},
            {"name": "Tokyo, Japan", "country": "Japan", "regions": ["Tokyo"], "lat": 35.7, "lon": 139.7, "samples": 2},
            {"name": "California, United States", "country": "United States", "regions": ["California"], "lat": 36.8, "lon": -119.4, "samples": 2}]}"#,
    )
    .unwrap();
    let rows = Tensor::randn([6, d], cpu);
    let rows = &rows / rows.norm_scalaropt_dim(2, [1], true);
    let coords = vec![
        (48.1, 11.6),
        (48.3, 11.2),
        (35.7, 139.7),
        (35.6, 139.9),
        (36.8, -119.4),
        (34.0, -118.2),
    ];
    RetrievalIndex::new(&rows, coords, vec![0, 0, 1, 1, 2, 2], Device::Cpu)
        .write(&dir.join("index.safetensors"))
        .unwrap();
    dir
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn every_endpoint_answers_as_the_cli_does() {
    let tmp = tmpdir();
    let photos = im2gps3k_images(4);
    let bytes: Vec<Vec<u8>> = photos.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let hierarchical = fixture("tiny-p14-336");
    let geocells = geocell_export(tmp.path());
    for model in [&hierarchical, &geocells] {
        let server = Server::start(model, &[]);
        let with_photos = |args: &[&str]| {
            let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| os(a)).collect();
            all.push(model.as_os_str());
            all.extend(photos.iter().map(|p| p.as_os_str()));
            cli_json(&all)
        };
        // geolocate: one photo per request, then all of them and a bad file in one multipart.
        let cli = with_photos(&["geolocate", "--json", "--model"]);
        for (i, b) in bytes.iter().enumerate() {
            let answer = server.post("/v1/geolocate?name=x.jpg", "image/jpeg", b);
            assert_eq!(answer.status, 200, "{}", answer.json);
            assert_eq!(answer.json[0]["image"], "x.jpg");
            assert_same("geolocate", &answer.json[0]["guess"], &cli[i]["guess"]);
        }
        let guess = &cli[0]["guess"];
        assert!(guess["confidence"]["radius_km"].as_f64().unwrap() >= 0.0);
        let points = match model == &geocells {
            true => &guess["top_cells"],
            false => &guess["top_cities"],
        };
        assert!(points[0]["lat"].is_number(), "{guess}");
        let mut files: Vec<(&str, &[u8])> =
            vec![("a.jpg", &bytes[0]), ("notes.jpg", b"plain text")];
        files.extend([("c.jpg", &bytes[2][..]), ("d.jpg", &bytes[3][..])]);
        let (ct, body) = multipart(&files);
        let answer = server.post("/v1/geolocate", &ct, &body);
        assert_eq!(answer.status, 200, "{}", answer.json);
        let names: Vec<&str> = (0..4)
            .map(|i| answer.json[i]["image"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a.jpg", "notes.jpg", "c.jpg", "d.jpg"]);
        assert_eq!(answer.json[1]["error"]["status"], 415, "{}", answer.json);
        for (row, cli_row) in [(0, 0), (2, 2), (3, 3)] {
            assert_same(
                "multipart",
                &answer.json[row]["guess"],
                &cli[cli_row]["guess"],
            );
        }

        // predict: zero-shot over labels, or by the geocell export's head.
        let labels = "France,Japan,Brazil,United States";
        let (cli, query) = match model == &geocells {
            true => (
                with_photos(&["predict", "--json", "--model"]),
                String::new(),
            ),
            false => (
                with_photos(&[
                    "predict", "--json", "--top-k", "3", "--labels", labels, "--model",
                ]),
                format!("?top_k=3&labels={}", labels.replace(' ', "%20")),
            ),
        };
        for (i, b) in bytes.iter().enumerate() {
            let answer = server.post(&format!("/v1/predict{query}"), "image/jpeg", b);
            assert_eq!(answer.status, 200, "{}", answer.json);
            assert_same("predict", &answer.json[0]["ranking"], &cli[i]["ranking"]);
        }
        let without_labels = server.post("/v1/predict?labels=A,B", "image/jpeg", &bytes[0]);
        let bare = server.post("/v1/predict", "image/jpeg", &bytes[0]);
        match model == &geocells {
            true => assert!(without_labels.error(400).contains("zero_shot=true")),
            false => assert!(bare.error(400).contains("`labels` is required")),
        }

        // embed: images (multipart) and texts, as `embed` writes them.
        let out = tmp.path().join("embedded.safetensors");
        let mut args = vec![
            os("embed"),
            os("--model"),
            model.as_os_str(),
            os("--text"),
            os("a photo of Tokyo"),
            os("--text"),
            os("Bayern"),
            os("--out"),
            out.as_os_str(),
        ];
        for p in &photos {
            args.extend([os("--image"), p.as_os_str()]);
        }
        common::streetclip_ok(&args);
        let tensors: std::collections::HashMap<String, tch::Tensor> =
            streetclip::formats::tensor_io::read(&out)
                .unwrap()
                .into_iter()
                .collect();
        let rows = |name: &str| Value::from(Vec::<Vec<f32>>::try_from(&tensors[name]).unwrap());
        let named: Vec<(String, &[u8])> = (0..4)
            .map(|i| (format!("p{i}.jpg"), &bytes[i][..]))
            .collect();
        let parts: Vec<(&str, &[u8])> = named.iter().map(|(n, b)| (n.as_str(), *b)).collect();
        let (ct, body) = multipart(&parts);
        let images = server.post("/v1/embed", &ct, &body);
        assert_eq!(images.status, 200, "{}", images.json);
        assert_same(
            "image_embeds",
            &images.json["image_embeds"],
            &rows("image_embeds"),
        );
        assert_eq!(images.json["images"][3], "p3.jpg");
        let texts = server.post(
            "/v1/embed",
            "application/json",
            br#"{"texts": ["a photo of Tokyo", "Bayern"]}"#,
        );
        assert_same(
            "text_embeds",
            &texts.json["text_embeds"],
            &rows("text_embeds"),
        );

        // What is loaded, the description of the API, health.
        let info = server.get("/v1/model").json;
        assert_eq!(info["architecture"]["image_size"], 336);
        match model == &geocells {
            true => assert_eq!(
                (info["geocells"].clone(), info["head_classes"][1].clone()),
                (3.into(), "Tokyo, Japan".into())
            ),
            false => assert_eq!(info["geolocation"], "hierarchical zero-shot"),
        }
        let openapi = server.get("/v1/openapi.json").json;
        for route in [
            "/healthz",
            "/v1/model",
            "/v1/geolocate",
            "/v1/predict",
            "/v1/embed",
            "/v1/openapi.json",
        ] {
            assert!(
                openapi["paths"][route].is_object(),
                "{route} is not described"
            );
        }
        assert_eq!(server.get("/healthz").json["status"], "ok");
    }
}

#[test]
fn bad_input_gets_its_status_and_a_json_error() {
    let photo = std::fs::read(&im2gps3k_images(1)[0]).unwrap();
    let server = Server::start(&fixture("tiny-p14-336"), &["--max-body-mb", "1"]);
    let post = |body: &[u8]| server.post("/v1/geolocate", "image/jpeg", body);
    assert!(post(b"just text")
        .error(415)
        .contains("not a JPEG, PNG or WebP"));
    let gif = post(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
    assert!(
        gif.error(415).contains("Gif images are not supported"),
        "{}",
        gif.json
    );
    assert!(post(&photo[..photo.len() / 3])
        .error(400)
        .contains("truncated"));
    let bomb = jpeg_claiming(&photo, 60000, 60000);
    assert!(post(&bomb).error(413).contains("over the limit"));
    assert!(post(b"").error(400).contains("no image"));
    // A chunked body (no declared length) is read up to the limit, then refused.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(
        s,
        "POST /v1/geolocate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = [
        format!("{:x}\r\n", 64 << 10).into_bytes(),
        vec![0xAB; 64 << 10],
        b"\r\n".to_vec(),
    ]
    .concat();
    for _ in 0..32 {
        if s.write_all(&chunk).is_err() {
            break; // refused and closed before the whole body was sent
        }
    }
    let (_, reply) = closed_after(s, Duration::from_secs(10));
    assert!(
        reply.starts_with("HTTP/1.1 413") && reply.contains("--max-body-mb"),
        "{reply}"
    );
    assert!(server
        .get("/v2/geolocate")
        .error(404)
        .contains("no route GET /v2/geolocate"));
    assert!(server
        .get("/v1/geolocate")
        .error(405)
        .contains("does not take GET"));
    let predict = server.post("/v1/predict?labels=A,,B", "image/jpeg", &photo);
    assert!(predict.error(400).contains("empty label"));
    let top = server.post("/v1/predict?labels=A,B&top_k=0", "image/jpeg", &photo);
    assert!(top.error(400).contains("top_k"));
    let unparsed = server.post("/v1/predict?labels=A,B&top_k=many", "image/jpeg", &photo);
    assert!(unparsed.error(400).contains("top_k"), "{}", unparsed.json);
    let texts = server.post("/v1/embed", "application/json", b"{\"texts\": 3}");
    assert!(texts.error(400).contains("texts"));
    // After all that the server still answers a good photo.
    assert_eq!(post(&photo).status, 200);
}

#[test]
fn concurrent_clients_share_batches_and_each_gets_its_own_answer() {
    let photos: Vec<Vec<u8>> = im2gps3k_images(8)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let server = Server::start(
        &fixture("tiny-p14-336"),
        &["--max-batch", "16", "--max-wait-ms", "20"],
    );
    // Each photo alone first: the answers every client must get back for it.
    let alone: Vec<Value> = photos
        .iter()
        .map(|p| server.post("/v1/geolocate", "image/jpeg", p).json[0]["guess"].clone())
        .collect();
    let distinct: std::collections::BTreeSet<String> = alone
        .iter()
        .map(|g| g["top_countries"].to_string())
        .collect();
    assert!(
        distinct.len() > 1,
        "the photos must be told apart for a mix-up to show"
    );
    let (clients, requests) = (16, 40);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..clients {
            let (server, photos, alone) = (&server, &photos, &alone);
            scope.spawn(move || {
                for r in 0..requests {
                    let i = (client + r) % photos.len();
                    let answer = server.post(
                        &format!("/v1/geolocate?name=c{client}r{r}"),
                        "image/jpeg",
                        &photos[i],
                    );
                    assert_eq!(answer.status, 200, "{}", answer.json);
                    assert_eq!(answer.json[0]["image"], format!("c{client}r{r}"));
                    assert_same(
                        &format!("client {client} request {r}"),
                        &answer.json[0]["guess"],
                        &alone[i],
                    );
                }
            });
        }
    });
    let health = server.get("/healthz").json;
    eprintln!(
        "{} requests from {clients} clients in {:.1} s: {health}",
        clients * requests,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(health["images"], (photos.len() + clients * requests) as u64);
    assert!(health["shared_batches"].as_u64().unwrap() > 0, "{health}");
    assert!(health["largest_batch"].as_u64().unwrap() > 1, "{health}");
}

/// Reads a connection until the server closes it; how long that took.
fn closed_after(mut stream: TcpStream, limit: Duration) -> (Duration, String) {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = vec![];
    let _ = stream.read_to_end(&mut got);
    (start.elapsed(), String::from_utf8_lossy(&got).to_string())
}

#[test]
fn a_full_queue_answers_503_and_slow_or_idle_clients_are_cut_off_in_bounded_memory() {
    let photo = std::fs::read(&im2gps3k_images(1)[0]).unwrap();
    let server = Server::start(
        &fixture("tiny-p14-336"),
        &[
            "--queue",
            "1",
            "--max-batch",
            "1",
            "--max-wait-ms",
            "0",
            "--timeout-s",
            "2",
        ],
    );
    // Eight images at once into a queue of one: refused whole, with Retry-After.
    let files: Vec<(&str, &[u8])> = (0..8).map(|_| ("p.jpg", &photo[..])).collect();
    let (ct, body) = multipart(&files);
    let busy = server.post("/v1/geolocate", &ct, &body);
    assert!(busy.error(503).contains("queue is full"));
    assert_eq!(busy.retry_after.as_deref(), Some("1"));
    assert!(
        server.get("/healthz").json["refused_full"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(
        server.post("/v1/geolocate", "image/jpeg", &photo).status,
        200
    );

    // A body declared over the limit is refused before a byte of it is sent.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(
        s,
        "POST /v1/geolocate HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
    )
    .unwrap();
    let (_, reply) = closed_after(s, Duration::from_secs(10));
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // Idle, half-sent headers, half-sent body: cut off after the 2 s timeout (408 for the body).
    let idle = TcpStream::connect(server.addr()).unwrap();
    let (waited, _) = closed_after(idle, Duration::from_secs(10));
    assert!(
        waited < Duration::from_secs(5),
        "idle connection open {waited:?}"
    );
    let mut headers = TcpStream::connect(server.addr()).unwrap();
    write!(headers, "POST /v1/geolocate HTTP/1.1\r\nHost: x\r\n").unwrap();
    let (waited, _) = closed_after(headers, Duration::from_secs(10));
    assert!(
        waited < Duration::from_secs(5),
        "half-sent headers open {waited:?}"
    );
    let mut body = TcpStream::connect(server.addr()).unwrap();
    write!(
        body,
        "POST /v1/geolocate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"
    )
    .unwrap();
    let (waited, reply) = closed_after(body, Duration::from_secs(10));
    assert!(
        waited < Duration::from_secs(5) && reply.starts_with("HTTP/1.1 408"),
        "{waited:?} {reply}"
    );

    // 200 clients each holding a half-sent 64 KiB body: memory stays bounded, all are cut off,
    // and the server answers afterwards.
    let before = server.rss_kib();
    let held: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            write!(
                s,
                "POST /v1/geolocate HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
            )
            .unwrap();
            s.write_all(&vec![0xAB; 64 << 10]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = server.rss_kib();
    eprintln!("RSS with 200 half-sent bodies: {before} KiB before, {during} KiB during");
    assert!(during < before + 64 * 1024, "{before} -> {during} KiB");
    for s in held {
        let (waited, reply) = closed_after(s, Duration::from_secs(15));
        assert!(
            waited < Duration::from_secs(10) && reply.starts_with("HTTP/1.1 408"),
            "{waited:?} {reply}"
        );
    }
    assert_eq!(
        server.post("/v1/geolocate", "image/jpeg", &photo).status,
        200
    );
    let log = server.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn sigterm_finishes_the_requests_in_flight_and_exits_0() {
    let photos: Vec<Vec<u8>> = im2gps3k_images(6)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let mut server = Server::start(&fixture("tiny-p14-336"), &[]);
    let files: Vec<(&str, &[u8])> = photos.iter().map(|p| ("p.jpg", &p[..])).collect();
    let (ct, body) = multipart(&files);
    // The request's headers are in (the connection accepted), its body not yet, at SIGTERM.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(s, "POST /v1/geolocate HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&body).unwrap();
    let (_, reply) = closed_after(s, Duration::from_secs(60));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let json: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 6);
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .all(|r| r["guess"].is_object()),
        "{json}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", server.log.lock().unwrap());
    assert!(server.log.lock().unwrap().contains("stopped"));
}

#[test]
fn the_map_page_in_a_real_browser_shows_the_apis_top_country_and_the_guess() {
    use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
    let tmp = tmpdir();
    let model = geocell_export(tmp.path());
    let server = Server::start(&model, &[]);
    let photos = im2gps3k_images(2);
    let api = server.post(
        "/v1/geolocate",
        "image/jpeg",
        &std::fs::read(&photos[1]).unwrap(),
    );
    let top_country = api.json[0]["guess"]["top_countries"][0]["label"]
        .as_str()
        .unwrap()
        .to_string();

    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("Chromium is not installed: run `make setup` (it installs Debian's chromium)");
    let options = headless_chrome::LaunchOptions::default_builder()
        .path(Some(chromium))
        .sandbox(false)
        .window_size(Some((1280, 800)))
        .build()
        .unwrap();
    let browser = headless_chrome::Browser::new(options).unwrap();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(60));
    tab.navigate_to(&server.url)
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    tab.wait_for_element("body[data-outlines]").unwrap();
    // Chromium reads an upload by its absolute path without `..` in it.
    let photos: Vec<PathBuf> = photos.iter().map(|p| p.canonicalize().unwrap()).collect();
    let paths: Vec<&str> = photos.iter().map(|p| p.to_str().unwrap()).collect();
    tab.wait_for_element("#photos")
        .unwrap()
        .set_input_files(&paths)
        .unwrap();
    if tab.wait_for_elements(".result.done").is_err() {
        let html = tab.evaluate("document.getElementById('results').innerHTML + ' files=' + document.getElementById('photos').files.length", false).unwrap();
        panic!("no result shown: {:?}", html.value);
    }
    while tab
        .find_elements(".result.done")
        .map(|r| r.len())
        .unwrap_or(0)
        < 2
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let name = photos[1].file_name().unwrap().to_str().unwrap();
    let shown = tab
        .evaluate(
            &format!("Array.from(document.querySelectorAll('.result')).find(c => c.querySelector('img').alt === {name:?}).querySelector('.stage.countries .bar .label').textContent"),
            false,
        )
        .unwrap()
        .value
        .unwrap();
    assert_eq!(shown.as_str(), Some(top_country.as_str()));
    assert_eq!(tab.find_elements("path.guess-marker").unwrap().len(), 2);
    assert!(!tab.find_elements("path.candidate").unwrap().is_empty());
    let outlines = tab
        .find_element("body")
        .unwrap()
        .get_attribute_value("data-outlines")
        .unwrap();
    assert!(
        outlines.unwrap().parse::<usize>().unwrap() > 150,
        "Natural Earth's countries drawn"
    );
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("map-page.png"), png).unwrap();
    eprintln!("screenshot: {}", out.join("map-page.png").display());
}

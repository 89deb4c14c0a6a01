"""`mullama serve` as its users meet it: a real server process on 127.0.0.1 with tiny models, driven by the
official `openai` client, raw HTTP requests (malformed ones too), 100 concurrent clients, a client that
leaves mid-stream, and the web page in a real headless Chromium."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tone_store, write_tone

API_KEY = "test-key-123"
QUESTION = "Describe the audio in detail"


def mullama_command() -> list[str]:
    script = Path(sys.executable).parent / "mullama"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from mullama.cli import main; main()"]


class Server:
    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None):
        self.process = subprocess.Popen(mullama_command() + ["serve", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        self.output: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
            if match:
                self.port = int(match.group(1))
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.process.kill()
        raise AssertionError("the server did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | str | dict | None = None, key: str | None = API_KEY,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key:
            sent["Authorization"] = f"Bearer {key}"
        data = json.dumps(body) if isinstance(body, dict) else body
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        text = response.read().decode()
        connection.close()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, {"text": text}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_mert, tiny_llama):
    from mullama.knn.build import build_index
    from mullama.knn.config import IndexBuildConfig
    from mullama.model import MusicLlama
    from mullama.store import FeatureStore

    root = tmp_path_factory.mktemp("server")
    clips = tone_store(root, tiny_mert, 6)
    build_index(IndexBuildConfig(store=str(root / "store"), progress=False))
    store = FeatureStore.open(str(root / "store"))
    model = MusicLlama.create(tiny_llama, store.encoder, device="cpu", seed=3)
    with torch.no_grad():
        model.model.music_adapter.gates.add_(1.0)  # open gates: answers depend on the track
    model.save(root / "adapter")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MULLAMA_API_KEY": API_KEY}
    server = Server(["--adapter", str(root / "adapter"), "--llama", str(tiny_llama), "--store", str(root / "store"),
                     "--mert", str(tiny_mert), "--index", "default", "--audio-root", str(root / "audio"),
                     "--port", "0", "--max-tokens", "64", "--max-history", "4", "--max-body-mb", "2",
                     "--max-audio-seconds", "5", "--batch-wait-ms", "20", "--device", "cpu",
                     "--model-name", "mu-test"], env)
    loaded = MusicLlama.load(root / "adapter", tiny_llama, device="cpu")
    yield {"server": server, "model": loaded, "store": store, "clips": clips, "root": root, "mert": tiny_mert}
    server.stop()


def expected(served, clip: str, question: str = QUESTION, **settings) -> str:
    stack = served["store"].get([clip])[0].astype(np.float32)
    return served["model"].answer(stack, question, **{"temperature": 0.0, "max_new_tokens": 8, **settings})


def client(served):
    import openai

    return openai.OpenAI(api_key=API_KEY, base_url=served["server"].url + "/v1", max_retries=0, timeout=60)


def audio_part(path: Path, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(),
                                                   "format": fmt}}


def test_the_openai_client_gets_the_models_answers_whole_and_streamed(served):
    from mullama.encoder_identity import MERT
    from mullama.extract.query_track import QueryTrack

    api = client(served)
    clip = served["clips"][1]
    assert [m.id for m in api.models.list().data] == ["mu-test"]
    reply = api.chat.completions.create(model="mu-test", messages=[{"role": "user", "content": QUESTION}],
                                        temperature=0, max_tokens=8, extra_body={"clip_id": clip})
    answer = expected(served, clip)
    assert reply.choices[0].message.content == answer
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(api.chat.completions.create(
        model="mu-test", messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": QUESTION}],
        temperature=0, max_tokens=8, stream=True, stream_options={"include_usage": True},
        extra_body={"clip_id": clip}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) >= 2 and "".join(pieces) == answer  # it streams, piece by piece
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer},
               {"role": "user", "content": [{"type": "text", "text": "What is the tempo?"}]}]
    follow_up = api.chat.completions.create(model="mu-test", messages=history, temperature=0, max_tokens=8,
                                            extra_body={"clip_id": clip})
    assert follow_up.choices[0].message.content == expected(served, clip, "What is the tempo?",
                                                             history=[(QUESTION, answer)])
    sampled = api.chat.completions.create(model="mu-test", messages=history[:1], temperature=0.9, top_p=0.9,
                                          seed=5, max_tokens=8, extra_body={"clip_id": clip})
    assert sampled.choices[0].message.content == expected(served, clip, temperature=0.9, top_p=0.9, seed=5)
    tiny = api.chat.completions.create(model="mu-test", messages=history[:1], temperature=1e-38, max_tokens=8,
                                       extra_body={"clip_id": clip})  # would overflow float32: served as greedy
    assert tiny.choices[0].message.content == answer

    # An upload is encoded exactly as extraction stores it.
    source = served["root"] / "audio" / "c2.wav"
    uploaded = api.chat.completions.create(
        model="mu-test", messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                                audio_part(source)]}], temperature=0, max_tokens=8)
    settings = served["store"].effective_settings()
    stack = QueryTrack.open(MERT, served["mert"], None, settings, "cpu").stack(source)
    assert uploaded.choices[0].message.content == served["model"].answer(stack, QUESTION, temperature=0.0,
                                                                         max_new_tokens=8)

    server = served["server"]
    status, near = server.request("POST", "/v1/similar", {"clip_id": clip, "k": 3})
    assert status == 200 and len(near["data"]) == 3 and clip not in [n["clip_id"] for n in near["data"]]
    status, by_audio = server.request("POST", "/v1/similar", {"input_audio": audio_part(source)["input_audio"]})
    assert status == 200 and by_audio["data"][0]["clip_id"] == "c2.wav"  # the upload finds its own stored clip
    status, info = server.request("GET", f"/v1/clips/{clip}")
    assert status == 200 and info["id"] == clip and info["playable"] and info["duration"] == pytest.approx(1.0)
    status, _ = server.request("GET", "/health", key=None)
    assert status == 200
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    metrics = connection.getresponse().read().decode()
    for name in ("mullama_requests_total", "mullama_request_seconds_bucket", "mullama_batch_size_bucket",
                 'mullama_tokens_total{kind="completion"}', "mullama_time_to_first_token_seconds_count"):
        assert name in metrics


def chat_body(served, **fields) -> dict:
    return {"model": "mu-test", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4,
            "temperature": 0, "clip_id": served["clips"][0], **fields}


def malformed_requests(served) -> list[tuple[str, str, object, dict]]:
    """(name, path, body, extra) -> each must be refused with a 4xx in OpenAI's error shape."""
    import soundfile

    root = served["root"]
    wav = (root / "audio" / "c1.wav").read_bytes()
    write_tone(root / "long.wav", 6.0, 24000)
    long_wav = (root / "long.wav").read_bytes()
    soundfile.write(root / "wide.flac", np.zeros((4 * 48000, 8), np.float32), 48000)  # 4 s, yet 1.5M samples
    wide_flac = (root / "wide.flac").read_bytes()
    encode = lambda data: base64.b64encode(data).decode()  # noqa: E731
    with_audio = lambda data, fmt="wav": chat_body(served, clip_id=None, messages=[  # noqa: E731
        {"role": "user", "content": [{"type": "text", "text": QUESTION},
                                     {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}]}])
    chat = "/v1/chat/completions"
    user = {"role": "user", "content": QUESTION}
    return [
        ("bad JSON", chat, '{"model": "mu-test", "messages": [', {}),
        ("a JSON list", chat, "[]", {}),
        ("a JSON string", chat, '"hello"', {}),
        ("NaN temperature", chat, json.dumps(chat_body(served)).replace('"temperature": 0', '"temperature": NaN'), {}),
        ("no model", chat, {k: v for k, v in chat_body(served).items() if k != "model"}, {}),
        ("no messages", chat, {k: v for k, v in chat_body(served).items() if k != "messages"}, {}),
        ("empty messages", chat, chat_body(served, messages=[]), {}),
        ("messages not a list", chat, chat_body(served, messages="hello"), {}),
        ("unknown role", chat, chat_body(served, messages=[{"role": "robot", "content": "hi"}]), {}),
        ("content a number", chat, chat_body(served, messages=[{"role": "user", "content": 5}]), {}),
        ("unknown part type", chat, chat_body(served, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]), {}),
        ("text part without text", chat, chat_body(served, messages=[{"role": "user", "content": [
            {"type": "text"}]}]), {}),
        ("audio part without audio", chat, chat_body(served, clip_id=None, messages=[{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "input_audio"}]}]), {}),
        ("audio format aac", chat, with_audio(encode(wav), "aac"), {}),
        ("audio not base64", chat, with_audio("!!not base64!!"), {}),
        ("audio empty", chat, with_audio(""), {}),
        ("base64 of text, not audio", chat, with_audio(encode(b"hello, this is not audio at all")), {}),
        ("truncated WAV", chat, with_audio(encode(wav[:len(wav) // 2])), {}),
        ("audio over the duration limit", chat, with_audio(encode(long_wav)), {"status": 413}),
        ("audio over the sample budget", chat, with_audio(encode(wide_flac), "flac"), {"status": 413}),
        ("a lone surrogate", chat, json.dumps(chat_body(served)).replace(QUESTION, "\\ud800"), {}),
        ("audio in an assistant message", chat, chat_body(served, messages=[
            user, {"role": "assistant", "content": [audio_part(root / "audio" / "c1.wav")]}, user]), {}),
        ("unknown clip", chat, chat_body(served, clip_id="no-such-clip.wav"), {"status": 404}),
        ("empty clip id", chat, chat_body(served, clip_id=""), {}),
        ("clip and audio", chat, {**with_audio(encode(wav)), "clip_id": served["clips"][0]}, {}),
        ("no track", chat, chat_body(served, clip_id=None), {}),
        ("temperature a word", chat, chat_body(served, temperature="hot"), {}),
        ("temperature huge", chat, chat_body(served, temperature=1e308), {}),
        ("top_p zero", chat, chat_body(served, top_p=0), {}),
        ("max_tokens huge", chat, chat_body(served, max_tokens=10**30), {}),
        ("max_tokens over the limit", chat, chat_body(served, max_tokens=1000), {}),
        ("max_tokens negative", chat, chat_body(served, max_tokens=-1), {}),
        ("max_tokens a boolean", chat, chat_body(served, max_tokens=True), {}),
        ("n = 2", chat, chat_body(served, n=2), {}),
        ("negative seed", chat, chat_body(served, seed=-5), {}),
        ("seed over 63 bits", chat, chat_body(served, seed=2**70), {}),
        ("stream a word", chat, chat_body(served, stream="yes"), {}),
        ("ends with the assistant", chat, chat_body(served, messages=[user, {"role": "assistant", "content": "x"}]),
         {}),
        ("two user messages", chat, chat_body(served, messages=[user, user]), {}),
        ("empty question", chat, chat_body(served, messages=[{"role": "user", "content": "  "}]), {}),
        ("history over the limit", chat, chat_body(served, messages=[user, {"role": "assistant", "content": "a"}] * 5
                                                   + [user]), {}),
        ("question over the context", chat, chat_body(served, messages=[
            {"role": "user", "content": "music " * 3000}]), {}),
        ("unknown model", chat, chat_body(served, model="gpt-4o"), {}),
        ("no API key", chat, chat_body(served), {"key": None, "status": 401}),
        ("wrong API key", chat, chat_body(served), {"key": "wrong", "status": 401}),
        ("no API key, before the body is read", chat, "{not json", {"key": None, "status": 401}),
        ("the API schema without a key", "/openapi.json", None, {"method": "GET", "key": None, "status": 401}),
        ("body over the size limit", chat, "x" * 2_100_000, {"status": 413}),
        ("similar: no track", "/v1/similar", {"k": 3}, {}),
        ("similar: k = 0", "/v1/similar", {"clip_id": served["clips"][0], "k": 0}, {}),
        ("similar: unknown clip", "/v1/similar", {"clip_id": "nope"}, {}),
        ("clip: unknown", "/v1/clips/nope", None, {"method": "GET"}),
        ("audio: a path escaping its root", "/v1/audio/..%2F..%2Fetc%2Fpasswd", None, {"method": "GET"}),
        ("chat with GET", chat, None, {"method": "GET", "status": 405}),
        ("unknown route", "/v1/nothing", {}, {}),
    ]


def test_every_malformed_request_gets_a_4xx_in_openai_shape(served):
    server = served["server"]
    cases = malformed_requests(served)
    assert len(cases) >= 30
    for name, path, body, extra in cases:
        status, reply = server.request(extra.get("method", "POST"), path, body, key=extra.get("key", API_KEY))
        assert 400 <= status < 500 and status == extra.get("status", status), (name, status, reply)
        error = reply.get("error")
        assert isinstance(error, dict) and error["message"] and "type" in error and "code" in error, (name, reply)
        assert "Traceback" not in error["message"], name
    # A body streamed without Content-Length is cut off at the limit too.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", body=iter([b"x" * 1_000_000] * 3), encode_chunked=True,
                       headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "request_too_large"
    assert server.request("GET", "/health", key=None)[0] == 200
    assert "Traceback" not in "".join(server.output)


def metric(server, name: str) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    text = connection.getresponse().read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_hundred_concurrent_requests_are_all_answered_in_shared_batches(served):
    server = served["server"]
    clips = served["clips"]
    answers = {clip: expected(served, clip, max_new_tokens=6) for clip in clips}
    batches_before = metric(server, "mullama_batch_size_count")

    def ask(number: int) -> tuple[str, int, dict]:
        clip = clips[number % len(clips)]
        return (clip, *server.request("POST", "/v1/chat/completions",
                                      chat_body(served, clip_id=clip, max_tokens=6)))

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(ask, range(100)))
    for clip, status, reply in results:
        assert status == 200, reply
        assert reply["choices"][0]["message"]["content"] == answers[clip]
    batches = metric(server, "mullama_batch_size_count") - batches_before
    assert batches < 100 / 2  # requests shared generate() calls (8 per batch at most)


def test_a_client_that_leaves_mid_stream_frees_its_slot(served):
    server = served["server"]
    cancelled = metric(server, "mullama_generations_cancelled_total")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps(chat_body(served, max_tokens=64, stream=True)),
                       {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data:")
    connection.sock.close()
    connection.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.request("GET", "/health", key=None)[1]["pending"] == 0 and \
                metric(server, "mullama_generations_cancelled_total") > cancelled:
            break
        time.sleep(0.1)
    assert server.request("GET", "/health", key=None)[1]["pending"] == 0
    assert metric(server, "mullama_generations_cancelled_total") == cancelled + 1


def test_the_web_page_in_headless_chromium(served):
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, "install Debian's chromium and chromium-driver (scripts/install.sh --test does)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    clip = served["clips"][3]
    try:
        # the page redraws its lists while a condition reads them: a replaced element is read again next poll
        wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(served["server"].url + "/")
        driver.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.TAB)
        driver.find_element(By.ID, "clip-search").send_keys(clip)
        wait.until(lambda d: [item.text.split()[0] for item in d.find_elements(By.CSS_SELECTOR, "#clip-results li")]
                   == [clip])  # the search narrowed the list to the clip
        driver.find_element(By.CSS_SELECTOR, "#clip-results li button.choose").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "track-name"), clip))
        wait.until(lambda d: d.find_element(By.ID, "player").get_attribute("src").startswith("blob:"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar li button.choose")) >= 3)
        for field, value in (("temperature", "0"), ("max-tokens", "8")):
            element = driver.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        questions = [QUESTION, "What is the tempo?"]
        for number, question in enumerate(questions, start=1):
            driver.find_element(By.ID, "question").send_keys(question)
            driver.find_element(By.ID, "ask").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.answer[data-done="true"]')) == number)
        shown = [element.text for element in driver.find_elements(By.CSS_SELECTOR, ".answer")]
        first = expected(served, clip)
        assert shown == [first, expected(served, clip, questions[1], history=[(QUESTION, first)])]
        assert driver.find_element(By.ID, "status").text == "done"
    finally:
        driver.quit()


def test_serve_mistakes_are_one_line_errors(served, tiny_llama, tmp_path):
    root, port = served["root"], str(served["server"].port)
    cases = [(["--adapter", str(root / "adapter"), "--llama", str(tiny_llama), "--port", port], "cannot listen on"),
             (["--adapter", str(tmp_path / "missing"), "--llama", str(tiny_llama), "--port", "0"], "missing")]
    for args, message in cases:
        result = subprocess.run(mullama_command() + ["serve", *args], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_clips_committed_while_serving_become_available(served, tiny_mert):
    from mullama.extract.config import ExtractConfig
    from mullama.extract.runner import run_local

    server, root = served["server"], served["root"]
    write_tone(root / "later" / "late.wav", 1.0, 24000, 500.0)
    assert server.request("GET", "/v1/clips/late.wav")[0] == 404
    run_local(ExtractConfig(input=str(root / "later"), mert=str(tiny_mert), store=str(root / "store"), workers=0,
                            progress=False))
    deadline = time.monotonic() + 15
    while server.request("GET", "/v1/clips/late.wav")[0] == 404 and time.monotonic() < deadline:
        time.sleep(0.5)
    status, reply = server.request("POST", "/v1/chat/completions", chat_body(served, clip_id="late.wav"))
    assert status == 200 and reply["choices"][0]["message"]["content"]


def test_the_readme_serve_command_plays_clips_extracted_from_the_parent_folder(served, tiny_llama, tmp_path,
                                                                               monkeypatch):
    """The README's serve command as written, from the folder the demo ran in: the store records sources relative
    to that folder (demo-run/corpus/audio/demo_0000.wav), and --audio-root names the audio folder itself."""
    from mullama.extract.config import ExtractConfig
    from mullama.extract.runner import run_local
    from mullama.knn.build import build_index
    from mullama.knn.config import IndexBuildConfig

    audio = tmp_path / "demo-run" / "corpus" / "audio"
    for number in range(2):
        write_tone(audio / f"demo_{number:04d}.wav", 1.0, 24000, 200.0 * (number + 1), seed=number)
    monkeypatch.chdir(tmp_path)
    run_local(ExtractConfig(input="demo-run/corpus/audio", mert=str(served["mert"]), store="demo-run/store",
                            workers=0, progress=False))
    build_index(IndexBuildConfig(store="demo-run/store", progress=False))
    (tmp_path / "demo-run" / "train" / "stage2").mkdir(parents=True)
    shutil.copytree(served["root"] / "adapter", tmp_path / "demo-run" / "train" / "stage2" / "adapter")
    shutil.copytree(tiny_llama, tmp_path / "demo-run" / "llama-mini-text")
    shutil.copytree(served["mert"], tmp_path / "demo-run" / "mert-tiny")
    env = {key: value for key, value in os.environ.items() if key != "MULLAMA_API_KEY"} | {"HF_HUB_OFFLINE": "1"}
    server = Server(["--adapter", "demo-run/train/stage2/adapter", "--llama", "demo-run/llama-mini-text",
                     "--store", "demo-run/store", "--mert", "demo-run/mert-tiny", "--index", "default",
                     "--audio-root", "demo-run/corpus/audio", "--port", "0", "--device", "cpu"], env, cwd=tmp_path)
    try:
        for clip in ("demo_0000.wav", "demo_0001.wav"):
            status, reply = server.request("GET", f"/v1/clips/{clip}", key=None)
            assert status == 200 and reply["playable"] is True, reply
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            connection.request("GET", f"/v1/audio/{clip}")
            response = connection.getresponse()
            assert response.status == 200 and response.read() == (audio / clip).read_bytes()
            connection.close()
    finally:
        server.stop()

"""The factlens CLI (python3 -m factlens) against the real factlens_server: every command's --json
output parsed and cross-checked between commands, readable tables, exit codes and error messages;
$FACTLENS_SERVER / $FACTLENS_MODEL, connection errors as one line that says what to do,
--first_token, and a response's warnings printed once as "warning: ..." (against a fake server).

Usage: test_cli.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest
from concurrent import futures

from support import PARIS, PROMPT, TOKEN, WARNING, Server, args, closed_port, write_token_file

SERVER, PACKAGE_DIR = args()
TOP = 5

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from factlens.v1 import factlens_pb2 as pb  # noqa: E402
from factlens.v1 import factlens_pb2_grpc as pb_grpc  # noqa: E402

REAL = object()  # run_cli(server=REAL): --server of the test's factlens_server


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="factlens-test-")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.server = Server(SERVER, "--auth_token_file", write_token_file(cls.tmp.name))
        cls.addClassCleanup(cls.server.stop)  # if setUpClass fails below; a no-op after tearDownClass's stop
        cls.locate = cls.json("locate", PROMPT, " Paris", "--top_neurons", str(TOP))

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.logs()

    @classmethod
    def run_cli(cls, *argv, token=TOKEN, server=REAL, env=None):
        """python3 -m factlens [--server S] ARGV; the environment's FACTLENS_* replaced by `env` (and the token)."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FACTLENS_")}
        environ.update(env or {}, PYTHONPATH=PACKAGE_DIR)
        if token:
            environ["FACTLENS_TOKEN"] = token
        server = cls.server.address if server is REAL else server
        return subprocess.run([sys.executable, "-m", "factlens", *(["--server", server] if server else []), *argv],
                              capture_output=True, text=True, env=environ, timeout=120)

    @classmethod
    def json(cls, *argv):
        out = cls.run_cli(*argv, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def test_models(self):
        (model,) = self.json("models")["models"]
        self.assertEqual(model["name"], "gpt2-facts-tiny")
        self.assertEqual(model["layers"], len(self.locate["ffn_layer_increase"]))

    def test_predict_and_locate_agree(self):
        predictions = self.json("predict", PROMPT, "--top_k", "3")["predictions"]
        self.assertEqual([int(p["id"]) for p in predictions][0], PARIS)
        self.assertEqual(len(predictions), 3)
        self.assertEqual(int(self.locate["target"]["id"]), PARIS)
        self.assertAlmostEqual(self.locate["outcome"]["prob"], predictions[0]["score"], places=9)
        self.assertEqual(len(self.locate["ffn_neurons"]), TOP)

    def test_rank_prints_every_field(self):
        (model,) = self.json("models")["models"]
        components = self.json("rank", PROMPT, " Paris", "--level", "head", "--top_k",
                               str(model["layers"] * model["heads"]))["components"]
        scores = [c["score"] for c in components]
        self.assertEqual(scores, sorted(scores, reverse=True))
        # Zero-valued fields are printed too: every head carries its layer and head, 0 included.
        self.assertEqual(sorted((c["component"]["layer"], c["component"]["head"]) for c in components),
                         [(layer, head) for layer in range(model["layers"]) for head in range(model["heads"])])
        top = self.locate["top_heads"][0]
        self.assertEqual((components[0]["component"]["layer"], components[0]["component"]["head"]),
                         (top["layer"], top["head"]))

    def test_project_trace_and_ablate_the_located_neurons(self):
        neuron = self.locate["ffn_neurons"][0]
        name = f"L{neuron['layer']}.N{neuron['neuron']}"
        projection = self.json("project", PROMPT, name + ".value", "--top_k", "4")
        self.assertEqual([t["id"] for t in projection["top"]], [t["id"] for t in neuron["top_tokens"][:4]])
        (key,) = self.json("trace", PROMPT, name)["keys"]
        self.assertEqual(len(key["layer_scores"]), 1 + 2 * len(self.locate["ffn_layer_increase"]))
        self.assertAlmostEqual(sum(key["layer_scores"]), key["total"], places=6)
        names = [f"L{n['layer']}.N{n['neuron']}" for n in self.locate["ffn_neurons"][:self.locate["ablated_ffn_neurons"]]]
        ablation = self.json("ablate", PROMPT, " Paris", *names)
        # Both recompute only the ablated row from the same unablated pass (AblatedLogitsAt): the
        # same float64 probability, printed the same way.
        self.assertEqual(ablation["after"]["prob"], self.locate["ablated"]["prob"])
        self.assertEqual(ablation["before"]["rank"], "1")

    def test_readable_locate_report_and_html(self):
        html_path = os.path.join(self.tmp.name, "report.html")
        out = self.run_cli("locate", PROMPT, " Paris", "--top_neurons", str(TOP), "--html", html_path)
        self.assertEqual(out.returncode, 0, out.stderr)
        neuron = self.locate["ffn_neurons"][0]
        self.assertIn(f'Target " Paris" (id {PARIS})', out.stdout)
        self.assertIn(f"L{neuron['layer']}.N{neuron['neuron']}", out.stdout)
        with open(html_path, encoding="utf-8") as f:
            self.assertIn(f"L{neuron['layer']}.N{neuron['neuron']}", f.read())

    def test_options_after_the_command(self):
        out = self.run_cli("predict", PROMPT, "--top_k", "1", "--json")
        self.assertEqual(int(json.loads(out.stdout)["predictions"][0]["id"]), PARIS)

    def test_errors_exit_1_with_code_and_message(self):
        for argv, token, code, field in [(["predict", ""], TOKEN, "INVALID_ARGUMENT", "prompt"),
                                         (["trace", PROMPT, "L0.Q1"], TOKEN, "INVALID_ARGUMENT", "component"),
                                         (["--model", "gpt-j", "predict", PROMPT], TOKEN, "NOT_FOUND", "gpt-j"),
                                         (["models"], None, "UNAUTHENTICATED", "")]:
            out = self.run_cli(*argv, token=token)
            self.assertEqual(out.returncode, 1, argv)
            self.assertIn(f"factlens: {code}: ", out.stderr)
            self.assertIn(field, out.stderr)
            self.assertEqual(out.stdout, "")
        self.assertEqual(self.run_cli("rank", PROMPT, " Paris", "--level", "NOPE").returncode, 2)

    def assertFails(self, out, line):
        """Exit status 1, nothing on stdout, exactly `line` on stderr (no traceback)."""
        self.assertEqual((out.returncode, out.stdout), (1, ""), out.stderr)
        self.assertEqual(out.stderr.splitlines(), [line])

    def test_environment_gives_server_and_model(self):
        address = self.server.address
        self.assertEqual(self.json_env({"FACTLENS_SERVER": address}, "models")["models"][0]["name"], "gpt2-facts-tiny")
        self.assertEqual(int(self.json_env({"FACTLENS_SERVER": address, "FACTLENS_MODEL": "gpt2-facts-tiny"},
                                           "predict", PROMPT)["predictions"][0]["id"]), PARIS)
        self.assertFails(self.run_cli("predict", PROMPT, server=None, env={"FACTLENS_SERVER": address,
                                                                          "FACTLENS_MODEL": "gpt-j"}),
                         "factlens: NOT_FOUND: model 'gpt-j' is not served (served: gpt2-facts-tiny); "
                         "pass model=... / --model or set FACTLENS_MODEL")
        # Options win over the environment.
        wrong = {"FACTLENS_SERVER": f"127.0.0.1:{closed_port()}", "FACTLENS_MODEL": "gpt-j"}
        out = self.run_cli("--model", "gpt2-facts-tiny", "predict", PROMPT, "--json", env=wrong)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(int(json.loads(out.stdout)["predictions"][0]["id"]), PARIS)

    def json_env(self, env, *argv):
        out = self.run_cli(*argv, "--json", server=None, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        return json.loads(out.stdout)

    def test_connection_errors_say_what_to_do(self):
        refused = f"127.0.0.1:{closed_port()}"
        metrics = self.server.http[len("http://"):]
        for out, line in [
                (self.run_cli("models", server=refused),
                 f"factlens: UNAVAILABLE: no factlens_server at {refused} (connection refused): start one or pass "
                 "--server / FACTLENS_SERVER"),
                (self.run_cli("locate", PROMPT, " Paris", server=None, env={"FACTLENS_SERVER": refused}),
                 f"factlens: UNAVAILABLE: no factlens_server at {refused} (connection refused): start one or pass "
                 "--server / FACTLENS_SERVER"),
                (self.run_cli("predict", PROMPT, server=metrics),
                 f"factlens: UNAVAILABLE: {metrics} answers HTTP/1.1, not gRPC: it looks like factlens_server's "
                 "metrics/health port; pass the --listen address instead")]:
            self.assertFails(out, line)

    def test_first_token_takes_a_multi_token_target(self):
        for argv in (["rank", PROMPT, " Parisian"], ["ablate", PROMPT, " Parisian", "L0.N0"],
                     ["locate", PROMPT, " Parisian", "--top_neurons", "1"]):
            out = self.run_cli(*argv)
            self.assertEqual(out.returncode, 1, argv)
            (line,) = out.stderr.splitlines()
            self.assertTrue(line.startswith('factlens: INVALID_ARGUMENT: target: " Parisian" is 2 tokens'), line)
            self.assertIn("--first_token", line)  # points to the option, which then takes the target:
        self.assertEqual(int(self.json("rank", PROMPT, " Parisian", "--first_token", "--top_k", "1")["target_id"]), PARIS)
        self.assertEqual(self.json("ablate", PROMPT, " Parisian", "L0.N0", "--first_token")["before"]["rank"], "1")
        report = self.json("locate", PROMPT, " Parisian", "--first_token", "--top_neurons", "1")
        self.assertEqual(int(report["target"]["id"]), PARIS)

    def test_ablate_one_component(self):
        neuron = self.locate["ffn_neurons"][0]
        ablation = self.json("ablate", PROMPT, " Paris", f"L{neuron['layer']}.N{neuron['neuron']}")
        self.assertEqual(ablation["before"]["rank"], "1")

    def test_warnings_are_printed_once(self):
        report = json_format.ParseDict(self.locate, pb.FactReport())
        report.warnings.append(WARNING)
        fake = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_FactLensServicer_to_server(
            _Warns(json_format.ParseDict(self.json("models"), pb.ListModelsResponse()), report), fake)
        address = f"127.0.0.1:{fake.add_insecure_port('127.0.0.1:0')}"
        fake.start()
        self.addCleanup(fake.stop, None)
        html_path = os.path.join(self.tmp.name, "warned.html")
        for argv in (["rank", PROMPT, "Paris"], ["rank", PROMPT, "Paris", "--json"],
                     ["locate", PROMPT, "Paris", "--html", html_path]):
            out = self.run_cli(*argv, server=address)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stderr.splitlines(), [f"warning: {WARNING}"], argv)
        self.assertIn('"warnings"', self.run_cli("rank", PROMPT, "Paris", "--json", server=address).stdout)
        with open(html_path, encoding="utf-8") as f:
            page = f.read()
        self.assertLess(page.index('<div class="warnings"'), page.index("<h1>"))
        self.assertIn("did you mean &quot; Paris&quot;", page)
        # A failed call (the fake has no Ablate): its one error line, no warning.
        out = self.run_cli("ablate", PROMPT, "Paris", "L0.N0", server=address)
        self.assertEqual(out.returncode, 1)
        (line,) = out.stderr.splitlines()
        self.assertTrue(line.startswith("factlens: UNIMPLEMENTED: "), line)


class _Warns(pb_grpc.FactLensServicer):
    """A fake server whose Rank and LocateFact responses carry a warning."""

    def __init__(self, models, report):
        self.models, self.report = models, report

    def ListModels(self, request, context):
        return self.models

    def Rank(self, request, context):
        return pb.RankResponse(target_id=PARIS, warnings=[WARNING])

    def LocateFact(self, request, context):
        yield pb.LocateFactEvent(report=self.report)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)

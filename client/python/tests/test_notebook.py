"""client/python/examples/paper_analysis.ipynb executed by a real Jupyter kernel (nbclient + ipykernel)
against a test server with both demo models: no cell fails, results display as HTML tables, figures
as PNG images with no %matplotlib magic, and the committed notebook is valid nbformat 4 without outputs.

Usage: test_notebook.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import base64
import os
import re
import shutil
import sys
import tempfile
import time
import unittest

from support import Server, args

SERVER, PACKAGE_DIR = args()
NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "paper_analysis.ipynb")
MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "models")
CELL_TIMEOUT = 60  # seconds per cell; the whole notebook takes a few seconds


def outputs(cell, mime):
    """The cell's display data of one MIME type (execute_result and display_data outputs)."""
    return [o["data"][mime] for o in cell.get("outputs", []) if mime in o.get("data", {})]


class NotebookTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import nbformat
        from nbclient import NotebookClient

        cls.committed = nbformat.read(NOTEBOOK, as_version=4)
        cls.dir = tempfile.mkdtemp(prefix="factlens-notebook-")
        # Everything the kernel and Jupyter write goes under cls.dir: connection files, the IPython
        # profile, the files the notebook saves (tempfile.gettempdir() follows TMPDIR).
        saved_env = dict(os.environ)
        os.environ.update({
            "PYTHONPATH": os.pathsep.join([PACKAGE_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
            "JUPYTER_RUNTIME_DIR": os.path.join(cls.dir, "runtime"), "IPYTHONDIR": os.path.join(cls.dir, "ipython"),
            "TMPDIR": cls.dir,
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # ipykernel's debugger warns about frozen modules otherwise
        })
        os.environ.pop("MPLBACKEND", None)  # the kernel's default (inline) backend, as a user gets it
        server = None
        try:
            server = Server(SERVER, "--model", f"demo={MODELS}/gpt2-facts-tiny",
                            "--model", f"llama={MODELS}/llama-facts-tiny")
            os.environ.update({"FACTLENS_SERVER": server.address, "FACTLENS_MODEL": "llama"})
            cls.executed = nbformat.read(NOTEBOOK, as_version=4)
            start = time.monotonic()
            NotebookClient(cls.executed, timeout=CELL_TIMEOUT, startup_timeout=60, kernel_name="python3",
                           allow_errors=True, resources={"metadata": {"path": cls.dir}}).execute()
            cls.seconds = time.monotonic() - start
            cls.saved = sorted(os.listdir(cls.dir))
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            try:
                if server is not None:
                    assert server.stop() == 0, server.logs()
            finally:
                shutil.rmtree(cls.dir, ignore_errors=True)
        print(f"notebook executed in {cls.seconds:.1f} s", file=sys.stderr)

    def cell(self, cell_id):
        return next(c for c in self.executed.cells if c.get("id") == cell_id)

    def test_committed_notebook_is_valid_nbformat_4_without_outputs(self):
        import nbformat

        nbformat.validate(self.committed)
        self.assertEqual(self.committed.nbformat, 4)
        for c in self.committed.cells:
            if c.cell_type == "code":
                self.assertEqual(c.outputs, [], c.id)
                self.assertIsNone(c.execution_count, c.id)
        self.assertNotIn("%matplotlib", "".join(c.source for c in self.committed.cells if c.cell_type == "code"))

    def test_every_cell_ran_without_an_error(self):
        errors = [(c.id, o.get("ename"), o.get("evalue"),
                   re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(o.get("traceback", [])))[-2000:])
                  for c in self.executed.cells if c.cell_type == "code" for o in c.outputs
                  if o.output_type == "error"]
        self.assertEqual(errors, [])
        for c in self.executed.cells:
            if c.cell_type == "code":
                self.assertIsNotNone(c.execution_count, c.id)
        stderr = "".join(o.get("text", "") for c in self.executed.cells if c.cell_type == "code"
                         for o in c.outputs if o.output_type == "stream" and o.get("name") == "stderr")
        self.assertNotIn("Traceback", stderr)

    def test_results_display_as_html_tables(self):
        for cell_id in ("connect", "predict", "locate", "rank-heads", "trace", "project", "ablate", "save"):
            html = outputs(self.cell(cell_id), "text/html")
            self.assertEqual(len(html), 1, cell_id)
            self.assertIn("<table", html[0], cell_id)
        # The notebook talked to the llama model, and tokens show their leading space, escaped.
        self.assertIn("llama", "".join(outputs(self.cell("connect"), "text/html")))
        self.assertIn("&quot; Paris&quot;", outputs(self.cell("predict"), "text/html")[0])
        # The report shows its summary and its figures inline.
        report = outputs(self.cell("locate"), "text/html")[0]
        self.assertIn("Fact localization", report)
        self.assertGreaterEqual(report.count('src="data:image/png;base64,'), 2)
        self.assertNotRegex(report, r"(src|href)=\"https?://")
        # The plain repr says what the result is, not its size in bytes.
        self.assertRegex(outputs(self.cell("locate"), "text/plain")[0], r"^<FactReport: llama: .* -> \" Paris\"")

    def test_figures_display_as_png_without_magics(self):
        for cell_id in ("plot-layers", "heads-heatmap"):
            png = outputs(self.cell(cell_id), "image/png")
            self.assertEqual(len(png), 1, cell_id)  # once: not also drawn by a pyplot backend
            data = base64.b64decode(png[0])
            self.assertTrue(data.startswith(b"\x89PNG\r\n\x1a\n"), cell_id)
            self.assertGreater(len(data), 5000, cell_id)

    def test_ablating_the_top_neurons_moves_the_target_on_the_llama_model(self):
        text = outputs(self.cell("ablate"), "text/plain")[0]
        before, after = map(float, re.search(r"log p (-?[0-9.]+) -> (-?[0-9.]+)", text).groups())
        self.assertLess(after, before - 0.1, text)

    def test_saved_report_reloads_and_temporary_files_were_written_in_the_test_directory(self):
        self.assertIn("factlens-paris-report.json", self.saved)
        self.assertIn("factlens-paris-report.html", self.saved)

    def test_bounded_time(self):
        self.assertLess(self.seconds, 120)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)

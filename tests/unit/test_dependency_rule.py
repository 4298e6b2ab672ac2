import subprocess
import sys


def test_domain_imports_no_infrastructure():
    code = (
        "import sys, conduit_workers.domain.bandit, conduit_workers.domain.policy, "
        "conduit_workers.domain.features, conduit_workers.domain.items, "
        "conduit_workers.domain.rewards, "
        "conduit_workers.domain.catalog\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'celery', 'redis', 'sqlalchemy', 'pydantic_ai', 'torch', 'kombu'})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_executor_and_feedback_modules_do_not_import_torch():
    code = (
        "import sys, conduit_workers.workers.executor, conduit_workers.workers.feedback, "
        "conduit_workers.workers.router\n"
        "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"

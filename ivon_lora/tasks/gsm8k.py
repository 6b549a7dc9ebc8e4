"""GSM8K (`openai/gsm8k`, config `main`): grade-school math word problems, question and answer.

The answer is a worked solution (with calculator annotations such as "<<48/2=24>>") ending in "#### <number>";
the reference is that final number and the learning target the whole solution. Generations are judged by
numeric match (`judges.numeric_match`: the number after "####" if the generation writes one, else its last
number). Prompt "Question: <question>\\nAnswer:" as lm-evaluation-harness's zero-shot gsm8k, at most 256 new
tokens, stopping at "Question:" (the model starting a new problem). Splits train and test (no validation split
on the Hub).
"""

from __future__ import annotations

from .base import RecordError, require
from .generative import QA_TEMPLATE, GenerativeExample, GenerativeTask
from .judges import JUDGES, extract_number

GSM8K_SPLITS = {"train": "train", "test": "test"}


def gsm8k_example(record: dict) -> GenerativeExample:
    require(record, "question", "answer")
    question, solution = record["question"], record["answer"]
    if not isinstance(question, str) or not isinstance(solution, str):
        raise RecordError(f"Invalid question and answer values: {question!r} and {solution!r} (must be strings)")
    _, marker, final = solution.rpartition("####")
    if not marker or extract_number(marker + final) is None:
        raise RecordError(f"Invalid answer value: {solution[-60:]!r} (must end in '#### <number>')")
    question = question.strip()
    return GenerativeExample(id="", prompt=QA_TEMPLATE.format(question=question), question=question,
                             references=(final.strip(),), target=" " + solution.strip())  # fmt: skip


TASKS = (
    GenerativeTask("gsm8k", gsm8k_example, "openai/gsm8k", "main", GSM8K_SPLITS,
                   judge=JUDGES["numeric_match"], report_judges=(JUDGES["numeric_match"],),
                   max_new_tokens=256, stop=("Question:",),
                   description="GSM8K grade-school math word problems, answered with a worked solution and "
                               "judged by its final number."),
)  # fmt: skip

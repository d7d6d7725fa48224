"""A real runner wrapped to record what each call asks of it (tests of who asks for which outputs)."""


class AskedOutputs(object):
    """The real step runner, recording the outputs each call asks for (sorted; None for all of them)."""

    def __init__(self, runner):
        self.runner = runner
        self.asked = []

    def infer(self, feed, outputs=None):
        self.asked.append(None if outputs is None else sorted(outputs))
        return self.runner.infer(feed, outputs)

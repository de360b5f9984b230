"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input or settings: one line (no traceback) and exit code 2. ``param`` names the setting at fault (a
    config field, such as ``test_size``), which the command line shows as its flag; ``remedy`` names a setting
    that would allow what was refused (the command line names its flag too); messages name no flags."""

    def __init__(self, message: str, param: str | None = None, remedy: str | None = None):
        super().__init__(f"{param}: {message}" + (f" (setting {remedy})" if remedy else "") if param else message)
        self.message, self.param, self.remedy = message, param, remedy

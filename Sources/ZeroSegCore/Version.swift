/// zeroseg's version (also in `zeroseg --version` and in every JSON output).
public let version = "0.1.0"

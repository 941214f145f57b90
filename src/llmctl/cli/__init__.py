def main() -> None:
    print("llmctl")

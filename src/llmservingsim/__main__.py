from llmservingsim.cli import main

main()

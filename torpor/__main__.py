from torpor.cli.main import main

main()

from hub.cli.commands import main

main()

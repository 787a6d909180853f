from storagefs.cli.main import main

main()

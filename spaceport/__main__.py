from spaceport.cli import main

main()
